// The y-websocket reference server, as its own `y-websocket-server` command runs it (an HTTP
// server whose upgrades go to @y/websocket-server's setupWSConnection, documents in memory), but
// on the address given as HOST and PORT (0: any free port) and printing the one it got, so that
// run.mjs can start it without picking a port first.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)
const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request))
})
server.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1', () => {
  const { address, port } = server.address()
  console.log(`listening addr=${address}:${port}`)
})
