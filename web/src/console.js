// The console at `/console`: /api/stats every second, rates from two readings, a chart of the last five minutes.
import { api, ApiError, el, takeTokenFromUrl } from './common.js'

const HISTORY = 300
const history = [] // { t, updates, connections, lag }
let previous = null

takeTokenFromUrl()
tick()
setInterval(tick, 1000)

async function tick () {
  const error = document.getElementById('error')
  let stats
  try {
    stats = await api('GET', '/api/stats')
    error.hidden = true
  } catch (err) {
    error.hidden = false
    error.textContent = err instanceof ApiError && err.status === 401
      ? 'Sign in on the main page with an owner or admin token first.'
      : err instanceof ApiError ? err.message : `the server does not answer (${err.message})`
    previous = null
    return
  }
  const seconds = previous ? Math.max(0.001, stats.time - previous.time) : 0
  const rate = (key) => previous ? Math.max(0, (stats.totals[key] - previous.totals[key]) / seconds) : 0
  const lag = stats.loop_lag?.last_second_max_ms ?? 0
  history.push({ updates: rate('updates'), connections: stats.connections, lag })
  if (history.length > HISTORY) history.shift()
  cards(stats, rate, lag)
  rooms(stats.room_list)
  chart()
  document.getElementById('process').textContent = stats.process_id
  previous = stats
}

function cards (s, rate, lag) {
  const wal = s.write_ahead
  const bus = s.bus
  const items = [
    ['rooms', s.rooms, 'live rooms'],
    ['connections', s.connections, 'connections'],
    ['updates', rate('updates').toFixed(0), 'updates / s'],
    ['frames', rate('frames_out').toFixed(0), 'frames out / s'],
    ['wal', `${wal.lag_ms.toFixed(0)} ms`, `write-ahead lag; ${wal.waiting_updates} updates, ${(wal.backlog_bytes / 1024).toFixed(1)} KiB waiting${wal.healthy ? '' : ' · PostgreSQL down, retrying'}`, !wal.healthy],
    ['compactions', s.totals.compactions, `compactions (${s.totals.compaction_failures} failed)`, s.totals.compaction_failures > 0],
    ['bus', !bus.enabled ? 'off' : bus.healthy ? (bus.alone ? 'alone' : 'ok') : 'down', 'cross-process bus', bus.enabled && !bus.healthy],
    ['lag', `${lag.toFixed(1)} ms`, `loop lag, last second (max ${s.loop_lag?.max_ms ?? 0} ms)`, lag > 50],
  ]
  document.getElementById('cards').replaceChildren(...items.map(([key, value, label, bad]) =>
    el('div', { class: `card${bad ? ' bad' : ''}`, 'data-card': key }, el('div', { class: 'v' }, String(value)), el('div', { class: 'l' }, label))))
}

function rooms (list) {
  const body = document.querySelector('#rooms tbody')
  body.replaceChildren(...list.map((r) => el('tr', { 'data-id': r.id },
    el('td', {}, el('a', { href: `/#/d/${r.id}` }, r.title)), el('td', {}, r.type),
    el('td', { class: 'connections' }, String(r.connections)), el('td', {}, r.presence.join(', ')),
    el('td', {}, `${(r.bytes / 1024).toFixed(1)} KiB`))))
  if (!list.length) body.append(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'No room is open.')))
}

function chart () {
  const canvas = document.getElementById('chart')
  const ctx = canvas.getContext('2d')
  const { width, height } = canvas
  ctx.clearRect(0, 0, width, height)
  ctx.strokeStyle = '#eef0f3'
  for (let y = 0; y <= 4; y++) { ctx.beginPath(); ctx.moveTo(0, (y * height) / 4); ctx.lineTo(width, (y * height) / 4); ctx.stroke() }
  const series = [['updates', '#2f6fed'], ['connections', '#1e9e5a'], ['lag', '#d9534f']]
  ctx.font = '12px system-ui'
  series.forEach(([key, colour], i) => {
    const top = Math.max(1, ...history.map((p) => p[key]))
    ctx.strokeStyle = colour
    ctx.lineWidth = 2
    ctx.beginPath()
    history.forEach((p, x) => {
      const px = width - (history.length - 1 - x) * (width / (HISTORY - 1))
      const py = height - 6 - (p[key] / top) * (height - 20)
      x ? ctx.lineTo(px, py) : ctx.moveTo(px, py)
    })
    ctx.stroke()
    ctx.fillStyle = colour
    ctx.fillText(`${key} max ${top.toFixed(key === 'lag' ? 1 : 0)}`, 8, 14 + i * 14)
  })
}
