// An MCP server built with the official TypeScript SDK, for the proxy
// tests: the Streamable HTTP transport with sessions, one tool that sends a
// log notification before its answer. It publishes protected resource
// metadata naming the test AS (MCP_TEST_ISSUER), accepts a request only
// with the bearer token written in the file named by MCP_TEST_BEARER_FILE
// (the test writes the broker's current token there), and prints its URL
// when ready.
import http from "node:http";
import fs from "node:fs";
import { randomUUID } from "node:crypto";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";

const bearerFile = process.env.MCP_TEST_BEARER_FILE;
const issuer = process.env.MCP_TEST_ISSUER;
let base = "";
const transports = new Map();

function newServer() {
  const server = new McpServer({ name: "sdk-test-server", version: "1.0.0" },
                               { capabilities: { logging: {} } });
  server.registerTool(
    "echo",
    { description: "Echoes its text", inputSchema: { text: z.string() } },
    async ({ text }, extra) => {
      await server.server.sendLoggingMessage({ level: "info", data: `echoing ${text}` },
                                             extra.sessionId);
      return { content: [{ type: "text", text: `echo: ${text}` }] };
    },
  );
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  const prm = "/.well-known/oauth-protected-resource/mcp";
  if (req.url === prm) {
    res.writeHead(200, { "content-type": "application/json" })
      .end(JSON.stringify({ resource: `${base}/mcp`, authorization_servers: [issuer] }));
    return;
  }
  const expected = fs.readFileSync(bearerFile, "utf8").trim();
  if (req.headers["authorization"] !== `Bearer ${expected}`) {
    res.writeHead(401, { "www-authenticate": `Bearer resource_metadata="${base}${prm}"` }).end();
    return;
  }
  let body;
  if (req.method === "POST") {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  }
  const sessionId = req.headers["mcp-session-id"];
  let transport = sessionId ? transports.get(sessionId) : undefined;
  if (!transport) {
    if (req.method !== "POST" || body?.method !== "initialize") {
      res.writeHead(sessionId ? 404 : 400).end();
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transport.sessionId && transports.delete(transport.sessionId);
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
});

httpServer.listen(0, "127.0.0.1", () => {
  const { port } = httpServer.address();
  base = `http://127.0.0.1:${port}`;
  console.log(`${base}/mcp`);
});
