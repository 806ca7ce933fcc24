// The console's only way to the server: the public API, with the operator's key when one is set.
// Server-Sent Events are read with fetch() and a stream parser, because EventSource cannot send
// an Authorization header.

const KEY_ITEM = "citytel.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function url(path, params = {}) {
  const target = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  return target;
}

async function checked(response) {
  if (response.ok) return response;
  let detail = `${response.status} ${response.statusText}`;
  try {
    detail = (await response.json()).detail || detail;
  } catch {
    // Not JSON: the status line says enough.
  }
  if (response.status === 401 || response.status === 403) {
    detail = `${detail} — paste an API key with the right scope above`;
  }
  throw new ApiError(response.status, detail);
}

export async function getJSON(path, params) {
  const response = await fetch(url(path, params), { headers: headers({ Accept: "application/json" }) });
  return (await checked(response)).json();
}

export async function postJSON(path, body = {}) {
  const response = await fetch(url(path), {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "application/json" }),
    body: JSON.stringify(body),
  });
  return (await checked(response)).json();
}

// Every page of a paged list route (items, next_offset).
export async function getAll(path, params, limit) {
  const items = [];
  let offset = 0;
  while (offset !== null && offset !== undefined) {
    const page = await getJSON(path, { ...params, limit, offset });
    items.push(...page.items);
    offset = page.next_offset;
  }
  return items;
}

// Parse "event:", "data:" and "id:" fields of an SSE byte stream into {event, data, id} objects.
async function* parseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer[newline] === "\r" ? 2 : 1));
      if (line === "") {
        if (data.length) yield { event, data: data.join("\n"), id };
        event = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = text;
      else if (field === "data") data.push(text);
      else if (field === "id") id = text;
    }
  }
}

// Follow an SSE route for good: reconnect after a break, resuming after the last event seen.
// onState("live" | "reconnecting" | error message) tells the page how the stream is doing.
export function follow(path, params, onEvent, onState) {
  let lastId = null;
  let stopped = false;
  const controller = new AbortController();
  (async () => {
    while (!stopped) {
      try {
        const response = await fetch(url(path, params), {
          headers: headers(lastId ? { "Last-Event-ID": lastId, Accept: "text/event-stream" } : { Accept: "text/event-stream" }),
          signal: controller.signal,
        });
        await checked(response);
        onState("live");
        for await (const message of parseEvents(response.body)) {
          if (message.id) lastId = message.id;
          onEvent(message);
        }
        onState("reconnecting");
      } catch (error) {
        if (stopped) return;
        onState(error instanceof ApiError ? error.message : "reconnecting");
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
  return () => {
    stopped = true;
    controller.abort();
  };
}
