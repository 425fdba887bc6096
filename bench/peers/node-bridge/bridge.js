'use strict'
// The WebSocket <-> LISTEN/NOTIFY bridge a user might write instead of pgws
// (a benchmark peer). Speaks the postgres-websockets URL forms /<token> and
// /<channel>/<token> with HS256 tokens {"mode": "r"|"w"|"rw", "channels": [..]}.
const http = require('http')
const crypto = require('crypto')
const pg = require('pg')
const { WebSocketServer } = require('ws')

const env = process.env
const LISTEN = env.PGWS_LISTEN_CHANNEL || 'postgres-websockets-listener'
if (!env.PGWS_DB_URI || env.PGWS_JWT_SECRET === undefined) throw new Error('PGWS_DB_URI and PGWS_JWT_SECRET are required')

function verify (token) {
  const [h, p, s, extra] = token.split('.')
  if (s === undefined || extra !== undefined) throw new Error('Error: invalid token')
  if (JSON.parse(Buffer.from(h, 'base64url')).alg !== 'HS256') throw new Error('Error: not HS256')
  const want = crypto.createHmac('sha256', env.PGWS_JWT_SECRET).update(h + '.' + p).digest()
  const got = Buffer.from(s, 'base64url')
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) throw new Error('Error: bad signature')
  const claims = JSON.parse(Buffer.from(p, 'base64url'))
  if (typeof claims.exp === 'number' && claims.exp <= Date.now() / 1000) throw new Error('Token expired')
  if (typeof claims.mode !== 'string') throw new Error('Missing mode')
  return claims
}

const subscribers = new Map() // channel -> Set of sockets
const pool = new pg.Pool({ connectionString: env.PGWS_DB_URI, max: Number(env.PGWS_POOL_SIZE || 10) })
const listener = new pg.Client({ connectionString: env.PGWS_DB_URI })
listener.on('error', (e) => { console.error('listener:', e.message); process.exit(1) })
listener.on('notification', (n) => {
  let channel = n.channel
  try { const m = JSON.parse(n.payload); if (typeof m?.channel === 'string') channel = m.channel } catch {}
  for (const ws of subscribers.get(channel) || []) ws.send(n.payload)
})

const server = http.createServer((req, res) => res.end('Hello, Web!'))
const wss = new WebSocketServer({ noServer: true })
server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {})
  const parts = req.url.slice(1).split('/')
  const [wanted, token] = parts.length > 1 ? parts : [undefined, parts[0]]
  let claims, channels
  try {
    claims = verify(token)
    const allowed = Array.isArray(claims.channels) ? claims.channels : []
    channels = wanted === undefined ? allowed : allowed.length === 0 || allowed.includes(wanted) ? [wanted] : []
    if (channels.length === 0) throw new Error('No allowed channels')
  } catch (e) {
    return socket.end('HTTP/1.1 400 Bad Request\r\n\r\n' + e.message)
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {})
    if (claims.mode === 'r' || claims.mode === 'rw') {
      for (const c of channels) {
        if (!subscribers.has(c)) subscribers.set(c, new Set())
        subscribers.get(c).add(ws)
      }
      ws.on('close', () => channels.forEach((c) => subscribers.get(c)?.delete(ws) && !subscribers.get(c).size && subscribers.delete(c)))
    }
    if (claims.mode === 'w' || claims.mode === 'rw') {
      let queue = Promise.resolve() // one socket's messages reach PostgreSQL in order
      ws.on('message', (data) => {
        const payload = data.toString()
        queue = queue.then(async () => {
          for (const channel of channels) {
            const message_delivered_at = Date.now() / 1000
            const text = JSON.stringify({ channel, event: 'WebsocketMessage', payload, claims: { ...claims, message_delivered_at } })
            await pool.query('SELECT pg_notify($1, $2)', [LISTEN, text]).catch(() => {})
          }
        })
      })
    }
  })
})

listener.connect()
  .then(() => listener.query(`LISTEN "${LISTEN.replace(/"/g, '""')}"`))
  .then(() => server.listen(Number(env.PGWS_PORT || 3000), env.PGWS_HOST || '127.0.0.1', () =>
    console.log(`Listening on port ${server.address().port}`)))
  .catch((e) => { console.error(e.message); process.exit(1) })
