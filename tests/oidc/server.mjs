// A real OAuth server for the end-to-end tests: node-oidc-provider with
// client credentials and the device flow (RFC 8628), resource indicators
// (RFC 8707) and PKCE, in front of a protected MCP endpoint whose
// protected resource metadata names it.
//
// Usage: node server.mjs TOKEN_TTL_SECS [JWK]
// With JWK (a public key as JSON), the client svc-jwt authenticates with
// private_key_jwt (RFC 7523) signed by its private half.
// Prints one JSON line {"issuer": ..., "mcp_url": ...} once listening on
// 127.0.0.1 (a port of its own choosing). Test-only routes:
//   POST /test/approve?user_code=CODE  the person approves a device login
//   POST /test/deny?user_code=CODE     the person refuses it
//   GET  /test/requests                every request's method, path and
//                                      form field names (never values)
// It exits when its stdin closes (the test went away).

import http from 'node:http';
import Provider, { errors } from 'oidc-provider';

const ttl = Number(process.argv[2] || 3600);
const clientJwk = process.argv[3] ? JSON.parse(process.argv[3]) : null;
const seen = [];

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;
const mcpUrl = `${issuer}/mcp`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'svc-ci',
      client_secret: 'oidc-cc-secret-value-1',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    ...(clientJwk ? [{
      client_id: 'svc-jwt',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [clientJwk] },
    }] : []),
    {
      client_id: 'device-client',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
    },
  ],
  scopes: ['openid', 'offline_access', 'mcp:read', 'mcp:write'],
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => mcpUrl,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== mcpUrl) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'mcp:read mcp:write',
          audience: mcpUrl,
          accessTokenTTL: ttl,
          accessTokenFormat: 'opaque',
        };
      },
    },
  },
  pkce: { required: () => true },
  ttl: { DeviceCode: 600, AccessToken: ttl, ClientCredentials: ttl },
});
provider.proxy = false;

async function tokenValid(token) {
  if (!token) return false;
  const found = (await provider.AccessToken.find(token))
    || (await provider.ClientCredentials.find(token));
  return Boolean(found && !found.isExpired && found.aud === mcpUrl);
}

async function settle(userCode, approve) {
  const code = await provider.DeviceCode.findByUserCode(userCode.replace(/-/g, '').toUpperCase());
  if (!code) return false;
  if (approve) {
    const grant = new provider.Grant({ accountId: 'user-1', clientId: code.clientId });
    const scope = code.params.scope || 'mcp:read';
    grant.addResourceScope(mcpUrl, scope);
    code.grantId = await grant.save();
    code.accountId = 'user-1';
    code.authTime = Math.floor(Date.now() / 1000);
    code.scope = scope;
    code.resource = code.params.resource || mcpUrl;
  } else {
    code.error = 'access_denied';
    code.errorDescription = 'the user said no';
  }
  await code.save();
  return true;
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  await new Promise((resolve) => req.on('end', resolve));
  const body = Buffer.concat(chunks);
  const fields = new URLSearchParams(body.toString('utf8'));
  if (!url.pathname.startsWith('/test/')) {
    seen.push({
      method: req.method,
      path: url.pathname,
      fields: [...fields.keys()],
      basic: (req.headers.authorization || '').startsWith('Basic '),
      grant_type: fields.get('grant_type'),
      resource: fields.get('resource'),
    });
  }
  if (url.pathname === '/test/requests') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(seen));
    return;
  }
  if (url.pathname === '/test/approve' || url.pathname === '/test/deny') {
    const ok = await settle(url.searchParams.get('user_code') || '', url.pathname === '/test/approve');
    res.statusCode = ok ? 200 : 404;
    res.end();
    return;
  }
  if (url.pathname === '/.well-known/oauth-protected-resource/mcp') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      resource: mcpUrl,
      authorization_servers: [issuer],
      scopes_supported: ['mcp:read'],
    }));
    return;
  }
  if (url.pathname === '/mcp') {
    const auth = req.headers.authorization || '';
    if (auth.startsWith('Bearer ') && await tokenValid(auth.slice(7))) {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ jsonrpc: '2.0', id: 1, result: {} }));
      return;
    }
    res.statusCode = 401;
    res.setHeader(
      'www-authenticate',
      `Bearer resource_metadata="${issuer}/.well-known/oauth-protected-resource/mcp"`,
    );
    res.end();
    return;
  }
  // Hand the request (with its body) to the provider.
  const { Readable } = await import('node:stream');
  const replay = Object.assign(Readable.from([body]), {
    method: req.method,
    url: req.url,
    headers: req.headers,
    httpVersion: req.httpVersion,
    socket: req.socket,
    connection: req.socket,
  });
  callback(replay, res);
});

// A reader that went away is no reason to stop serving.
process.stdout.on('error', () => {});
process.stdout.write(`${JSON.stringify({ issuer, mcp_url: mcpUrl })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
