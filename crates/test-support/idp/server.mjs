// A real OpenID provider for Portcullis' end-to-end tests: oidc-provider on 127.0.0.1 with a
// client-credentials client, JWT (RFC 9068) and opaque access tokens, introspection and
// revocation. Test-only; never exposed beyond loopback.
//
//   node server.mjs genkey <kid> [RS256|ES256]   prints a private JWK (one line)
//   PORT=<port|0> JWKS_FILE=<file> TOKEN_TTL=<s> node server.mjs
//
// JWKS_FILE holds {"keys": [private JWKs]}; the first key signs, the others are still
// published (rotation). Prints `oidc-provider listening http://127.0.0.1:<port>` when ready.

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

if (process.argv[2] === 'genkey') {
  const kid = process.argv[3] || 'k1';
  const alg = process.argv[4] || 'RS256';
  const pair = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = pair.privateKey.export({ format: 'jwk' });
  process.stdout.write(JSON.stringify({ ...jwk, kid, alg, use: 'sig' }) + '\n');
  process.exit(0);
}

// Loaded only to serve: `genkey` stays a small, quick process.
const { default: Provider, errors } = await import('oidc-provider');

const jwks = JSON.parse(readFileSync(process.env.JWKS_FILE, 'utf8'));
const ttl = Number(process.env.TOKEN_TTL || 300);
const signAlg = jwks.keys[0].alg || 'RS256';
const SCOPES = 'read:orders write:orders admin:orders';
const JWT_RESOURCE = 'https://api.example/jwt';
const OPAQUE_RESOURCE = 'https://api.example/opaque';

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  jwks,
  clients: [
    {
      client_id: 'gw-client',
      client_secret: 'gw-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: SCOPES,
    },
    {
      client_id: 'gateway',
      client_secret: 'gateway-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  scopes: ['openid', ...SCOPES.split(' ')],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => JWT_RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource === JWT_RESOURCE) {
          return {
            scope: SCOPES,
            audience: JWT_RESOURCE,
            accessTokenFormat: 'jwt',
            accessTokenTTL: ttl,
            jwt: { sign: { alg: signAlg } },
          };
        }
        if (resource === OPAQUE_RESOURCE) {
          return { scope: SCOPES, audience: OPAQUE_RESOURCE, accessTokenFormat: 'opaque', accessTokenTTL: ttl };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
  enabledJWA: {
    requestObjectSigningAlgValues: ['RS256', 'ES256'],
  },
  ttl: { ClientCredentials: ttl },
  // Clients default to RS256 ID tokens; with only an ES256 key that default cannot be met.
  clientDefaults: { id_token_signed_response_alg: signAlg },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
server.on('request', provider.callback());
console.log(`oidc-provider listening ${issuer}`);
