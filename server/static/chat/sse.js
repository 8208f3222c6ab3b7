// Server-sent events over fetch (EventSource can neither POST nor send an Authorization header): the parser, and a
// reply stream that resumes by itself with Last-Event-ID when the connection drops, with no gap or duplicate.

const RESUME_DELAYS_MS = [250, 500, 1000, 2000, 4000];

export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll('\r\n', '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, event: 'message', data: '' };
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;  // a heartbeat comment
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') event.data += (event.data ? '\n' : '') + value;
        else if (field === 'id') event.id = Number(value);
        else if (field === 'event') event.event = value;
      }
      if (event.data) yield event;
    }
  }
}

// Follows one reply: `first` is the response of the POST that started it. Calls onDelta(text) per delta and
// returns the final event's data ({status, ...} or {error, ...}). `resume(lastId)` reopens the stream.
export async function followReply(first, resume, onDelta, signal) {
  let response = first;
  let lastId = 0;
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const event of readEvents(response)) {
        if (event.id !== null) {
          if (event.id <= lastId) continue;  // already seen
          lastId = event.id;
        }
        const data = JSON.parse(event.data);
        if (event.event === 'message.delta') onDelta(data.delta);
        else if (event.event === 'message.completed') return data;
        else if (event.event === 'message.error') return data;
        attempt = 0;
      }
    } catch (error) {
      if (signal?.aborted) throw error;
    }
    // The stream ended without its final event: the connection dropped. Resume after the last event seen.
    if (attempt >= RESUME_DELAYS_MS.length) throw new Error('the connection was lost; reload to see the reply');
    await new Promise((resolve) => setTimeout(resolve, RESUME_DELAYS_MS[attempt]));
    try {
      response = await resume(lastId);
    } catch (error) {
      if (error.status && error.status < 500 && error.status !== 429) throw error;
      response = null;
    }
    if (response === null) continue;
  }
}
