"""Conversation memory in Redis."""
