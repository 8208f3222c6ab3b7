// The HTTP side of the page: the caller's credentials, JSON requests, and error envelopes as readable messages.

const TOKEN_KEY = 'codeface.token';

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }

  // Every error the server sends is an envelope: {"error": {"message", "type", "param", "code"}}.
  static async from(response) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.error?.message || body.message || message;
    } catch { /* not JSON: keep the status line */ }
    const retryAfter = Number(response.headers.get('Retry-After')) || null;
    if (response.status === 429) {
      message = `Rate limited: ${message}` + (retryAfter ? ` Retry in ${retryAfter} s.` : '');
    } else if (response.status === 503 && retryAfter) {
      message = `${message} (retry in ${retryAfter} s)`;
    }
    return new ApiError(response.status, message, retryAfter);
  }
}

export class Api {
  constructor() {
    this.token = sessionStorage.getItem(TOKEN_KEY);
  }

  setToken(token) {
    this.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  }

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra;
  }

  async fetch(method, path, { json, headers = {}, signal } = {}) {
    const init = { method, signal, headers: this.headers(headers) };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers['Content-Type'] = 'application/json';
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await ApiError.from(response);
    return response;
  }

  async json(method, path, json) {
    const response = await this.fetch(method, path, { json });
    return response.status === 204 ? null : response.json();
  }

  async login(username, password) {
    const response = await fetch('/api/v1/auth/token', {
      method: 'POST', body: new URLSearchParams({ username, password }),
    });
    if (!response.ok) throw await ApiError.from(response);
    this.setToken((await response.json()).access_token);
  }
}
