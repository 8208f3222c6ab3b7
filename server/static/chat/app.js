// The chat page: the reference client of the conversations API (sign in, conversations, streamed replies with
// Stop and automatic resume, Markdown rendered safely, per-reply timings and token counts).
import { Api, ApiError } from '/static/chat/api.js';
import { followReply } from '/static/chat/sse.js';
import { renderMarkdown } from '/static/chat/render.js';

const API = '/api/v1/conversations';
const $ = (id) => document.getElementById(id);
const api = new Api();
const state = { conversations: [], current: null, streaming: null };

function showStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function describe(error) {
  return error instanceof ApiError ? error.message : `Error: ${error.message}`;
}

// --- sign in ---------------------------------------------------------------------------------------------------

// Set by the server on the page: with auth on and no credentials saved, sign in first (no request bound to fail).
const AUTH_ON = document.documentElement.dataset.auth !== 'off';

function showSignIn() {
  $('app').hidden = true;
  $('signin').hidden = false;
}

async function start() {
  if (AUTH_ON && !api.token) {
    showSignIn();
    return;
  }
  try {
    await loadConversations();  // 200 with auth off, or with a saved token
    $('signin').hidden = true;
    $('app').hidden = false;
    const models = await api.json('GET', '/v1/models');
    $('model').textContent = models.data[0]?.id ?? '';
    if (state.conversations.length) await openConversation(state.conversations[0].id);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      api.setToken(null);
      showSignIn();
    } else {
      showStatus(describe(error), true);
    }
  }
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await api.login(form.get('username'), form.get('password'));
    $('signin-error').textContent = '';
    await start();
  } catch (error) {
    $('signin-error').textContent = describe(error);
  }
});

$('key-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  api.setToken(new FormData(event.target).get('key').trim());
  await start();
  if (!$('signin').hidden) $('signin-error').textContent = 'That key was not accepted.';
});

$('sign-out').addEventListener('click', () => {
  api.setToken(null);
  location.reload();
});

// --- conversations ---------------------------------------------------------------------------------------------

async function loadConversations() {
  const page = await api.json('GET', `${API}?limit=100`);
  state.conversations = page.data;
  renderConversationList();
}

function renderConversationList() {
  const list = $('conversations');
  list.replaceChildren(...state.conversations.map((conversation) => {
    const item = document.createElement('li');
    item.textContent = conversation.title || 'Untitled';
    item.dataset.id = conversation.id;
    item.classList.toggle('active', conversation.id === state.current?.id);
    item.addEventListener('click', () => openConversation(conversation.id).catch((e) => showStatus(describe(e), true)));
    return item;
  }));
}

async function openConversation(id) {
  const conversation = await api.json('GET', `${API}/${id}?limit=500`);
  state.current = conversation;
  $('title').textContent = conversation.title || 'Untitled';
  $('rename').hidden = $('delete').hidden = false;
  $('messages').replaceChildren();
  showStatus('');
  for (const message of conversation.messages) {
    const view = addMessage(message.role, message.content);
    if (message.role === 'assistant') {
      if (message.status === 'in_progress') {
        await resumeReply(view, message.id);
      } else {
        finishView(view, { ...message, status: message.status });
      }
    }
  }
  renderConversationList();
}

function newChat() {
  state.current = null;
  $('title').textContent = 'New chat';
  $('rename').hidden = $('delete').hidden = true;
  $('messages').replaceChildren();
  renderConversationList();
  $('input').focus();
}

$('new-chat').addEventListener('click', newChat);

$('rename').addEventListener('click', async () => {
  const title = prompt('New title', state.current.title);
  if (!title) return;
  try {
    await api.json('PATCH', `${API}/${state.current.id}`, { title });
    state.current.title = title;
    $('title').textContent = title;
    await loadConversations();
  } catch (error) {
    showStatus(describe(error), true);
  }
});

$('delete').addEventListener('click', async () => {
  if (!confirm('Delete this conversation?')) return;
  try {
    await api.json('DELETE', `${API}/${state.current.id}`);
    await loadConversations();
    newChat();
  } catch (error) {
    showStatus(describe(error), true);
  }
});

// --- messages --------------------------------------------------------------------------------------------------

function addMessage(role, text) {
  const item = document.createElement('li');
  item.className = `message ${role}`;
  const body = document.createElement('div');
  body.className = 'body';
  const meta = document.createElement('div');
  meta.className = 'meta';
  item.append(body, meta);
  $('messages').append(item);
  const view = { item, body, meta, text: '', started: performance.now(), firstToken: null, frame: 0 };
  if (role === 'user') body.textContent = text; else setText(view, text);
  item.scrollIntoView({ block: 'end' });
  return view;
}

function setText(view, text) {
  view.text = text;
  // One render per animation frame, however many deltas arrive in it.
  if (!view.frame) {
    view.frame = requestAnimationFrame(() => {
      view.frame = 0;
      renderMarkdown(view.body, view.text);
      view.item.scrollIntoView({ block: 'end' });
    });
  }
}

function finishView(view, final) {
  if (view.frame) cancelAnimationFrame(view.frame);
  view.frame = 0;
  if (final.content !== undefined && final.content !== null) view.text = final.content;
  renderMarkdown(view.body, view.text);
  view.item.classList.add(final.status || 'failed');
  const parts = [];
  if (view.firstToken !== null) {
    parts.push(`TTFT ${Math.round(view.firstToken - view.started)} ms`);
    const seconds = (performance.now() - view.firstToken) / 1000;
    if (final.completion_tokens > 1 && seconds > 0) {
      parts.push(`${((final.completion_tokens - 1) / seconds).toFixed(1)} tok/s`);
    }
  }
  if (final.prompt_tokens != null) parts.push(`${final.prompt_tokens} prompt + ${final.completion_tokens} completion tokens`);
  if (final.status && final.status !== 'completed') parts.push(final.status);
  if (final.error) parts.push(final.error);
  view.meta.textContent = parts.join(' · ');
}

function onDelta(view) {
  return (delta) => {
    if (view.firstToken === null) view.firstToken = performance.now();
    setText(view, view.text + delta);
  };
}

async function send(content) {
  if (!state.current) {
    const made = await api.json('POST', API, {});
    await loadConversations();
    state.current = { ...made, messages: [] };
  }
  const conversationId = state.current.id;
  const question = addMessage('user', content);
  const view = addMessage('assistant', '');
  const controller = new AbortController();
  let response;
  try {
    response = await api.fetch('POST', `${API}/${conversationId}/messages`, {
      json: { content, stream: true }, signal: controller.signal,
    });
  } catch (error) {
    // Refused (rate limit, busy, ...): nothing was stored; give the text back to the composer.
    question.item.remove();
    view.item.remove();
    $('input').value = content;
    throw error;
  }
  const messageId = response.headers.get('X-Message-ID');
  await follow(view, conversationId, messageId, response, controller);
  if (!state.current.title) await loadConversations();
}

async function resumeReply(view, messageId) {
  const conversationId = state.current.id;
  const controller = new AbortController();
  const response = await streamFrom(conversationId, messageId, 0, controller);
  await follow(view, conversationId, messageId, response, controller);
}

function streamFrom(conversationId, messageId, lastId, controller) {
  return api.fetch('GET', `${API}/${conversationId}/stream?message_id=${messageId}`, {
    headers: { 'Last-Event-ID': String(lastId) }, signal: controller.signal,
  });
}

async function follow(view, conversationId, messageId, response, controller) {
  state.streaming = { conversationId, messageId, controller };
  $('send').hidden = true;
  $('stop').hidden = false;
  try {
    const final = await followReply(response, (lastId) => streamFrom(conversationId, messageId, lastId, controller),
                                    onDelta(view), controller.signal);
    finishView(view, final);
  } finally {
    state.streaming = null;
    $('send').hidden = false;
    $('stop').hidden = true;
  }
}

$('stop').addEventListener('click', async () => {
  const streaming = state.streaming;
  if (!streaming) return;
  try {
    // The server stops the reply and stores what was generated; the stream then ends with its final event.
    await api.json('POST', `${API}/${streaming.conversationId}/messages/${streaming.messageId}/cancel`);
  } catch (error) {
    showStatus(describe(error), true);
  }
});

$('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const content = $('input').value.trim();
  if (!content || state.streaming) return;
  $('input').value = '';
  showStatus('');
  try {
    await send(content);
  } catch (error) {
    showStatus(describe(error), true);
  }
});

$('input').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
});

start();
