// For UI builders: post a message to a conversation and stream the reply into an element, in plain JavaScript.
export async function streamReply(conversationId, content, token, output) {
  const response = await fetch(`/api/v1/conversations/${conversationId}/messages`, {
    method: 'POST', body: JSON.stringify({ content, stream: true }),
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (let chunk; !(chunk = await reader.read()).done;) {
    const events = (buffer += chunk.value).split('\n\n');
    buffer = events.pop();  // an event not complete yet
    for (const event of events) {
      const field = (name) => event.split('\n').find((line) => line.startsWith(name))?.slice(name.length);
      const data = field('data: ') && JSON.parse(field('data: '));
      if (field('event: ') === 'message.delta') output.textContent += data.delta;
      if (field('event: ') === 'message.completed') return data;
    }
  }
}
