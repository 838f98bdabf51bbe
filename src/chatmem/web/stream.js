// A reply's event stream, as the page reads it: opened (GET …/stream re-attaches to the
// session's running or just finished generation), followed event by event, and resumed
// with Last-Event-ID when the connection drops. What an event does is reply.js's.
import { ApiError, api, sessionPath } from "./api.js";
import { readEvents } from "./sse.js";

// A reply's connection that drops is resumed (Last-Event-ID) this many times in a row,
// waiting a little longer each time.
const RESUME_ATTEMPTS = 5;
const RESUME_BACKOFF_MS = 400;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// GET …/stream: the session's running (or just finished) generation from the start,
// or after turn.lastEventId. null when there is none (204).
export async function openStream(turn) {
  const headers = turn.lastEventId ? { "Last-Event-ID": turn.lastEventId } : {};
  const res = await api("GET", sessionPath(turn.sid, "/stream"), undefined, {
    signal: turn.controller.signal,
    accept: "text/event-stream",
    headers,
  });
  const type = res.headers.get("Content-Type") || "";
  if (res.status === 204 || !type.startsWith("text/event-stream")) {
    if (res.body) res.body.cancel().catch(() => {});
    return null;
  }
  return res;
}

// The one reader of a reply's events, for a send and a re-attach alike: `onEvent(ev)`
// for each (it sets turn.ended at the reply's end). A connection that drops before the
// end is picked up again with Last-Event-ID; if the server has nothing left to replay,
// `onGone()` (the stored history shows how the reply ended).
export async function followReply(turn, res, { onEvent, onGone }) {
  let failures = 0;
  for (;;) {
    if (res) {
      try {
        for await (const ev of readEvents(res.body)) {
          if (ev.id !== null) turn.lastEventId = ev.id;
          failures = 0;
          onEvent(ev);
          if (turn.ended) break;
        }
      } catch (err) {
        if (err && err.name === "AbortError") throw err;
        // The connection dropped (a network error mid-body): resume below.
      }
      if (turn.ended) {
        res.body.cancel().catch(() => {});
        return;
      }
    }
    if (++failures > RESUME_ATTEMPTS) {
      throw new ApiError(0, "network", "the connection to the server was lost");
    }
    await sleep(RESUME_BACKOFF_MS * failures);
    if (turn.controller.signal.aborted) throw new DOMException("detached", "AbortError");
    let nothingLeft = false;
    try {
      res = await openStream(turn);
      nothingLeft = res === null;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      // 404: a server without re-attach, as if there were nothing to replay.
      if (err.status !== 0 && err.status < 500 && err.status !== 404) throw err;
      nothingLeft = err.status === 404;
      res = null;
    }
    if (nothingLeft) {
      turn.ended = true;
      await onGone();
      return;
    }
  }
}
