"""The seeds' own routes (SPEC §4 "Seed-compatible API"), thin adapters over ChatService.

`simple_chat` serves seeds 000/001, `chat_app` seeds 002/003, `companion` seed 004;
`conversations` maps the seeds' implicit conversations onto sessions.
"""
