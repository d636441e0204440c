// What the editor page and the console share: the token, the API call, a tiny element builder.
const TOKEN_KEY = 'collab-token'

export class ApiError extends Error {
  constructor (status, code, message) { super(message); this.status = status; this.code = code }
}

export const token = () => localStorage.getItem(TOKEN_KEY)
export const signedIn = () => Boolean(token())
export const setToken = (value) => value ? localStorage.setItem(TOKEN_KEY, value) : localStorage.removeItem(TOKEN_KEY)
export const forgetToken = () => localStorage.removeItem(TOKEN_KEY)

// The `make run` link carries the token: keep it, and take it out of the address bar and history.
export function takeTokenFromUrl () {
  const params = new URLSearchParams(location.search)
  if (!params.has('token')) return
  setToken(params.get('token'))
  params.delete('token')
  const rest = params.toString()
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash)
}

export async function api (method, path, body) {
  const headers = {}
  if (token()) headers.Authorization = `Bearer ${token()}`
  const init = { method, headers }
  if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body) }
  const response = await fetch(path, init)
  const data = response.status === 204 ? null : await response.json().catch(() => null)
  if (!response.ok) throw new ApiError(response.status, data?.error?.code, data?.error?.message || response.statusText)
  return data
}

export function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value)
    else if (value !== false && value != null) node.setAttribute(key, value === true ? '' : value)
  }
  node.append(...children.filter((c) => c !== '' && c != null))
  return node
}

// A caret colour per user: a hue from a hash of the id, dark enough for white label text. Hex, because the
// caret extension accepts only hex colours (anything else is drawn transparent).
export function colourOf (key) {
  let h = 0
  for (const ch of String(key)) h = (h * 31 + ch.codePointAt(0)) >>> 0
  const hue = (h * 137.508) % 360
  const f = (n) => {
    const k = (n + hue / 30) % 12
    const v = 0.4 - 0.28 * Math.max(-1, Math.min(k - 3, 9 - k, 1)) // HSL with s = 0.7, l = 0.4
    return Math.round(v * 255).toString(16).padStart(2, '0')
  }
  return `#${f(0)}${f(8)}${f(4)}`
}
