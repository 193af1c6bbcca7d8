// A real, certified OpenID provider (npm `oidc-provider`) for podgate's tests, on loopback only.
//
//   node provider.mjs '{"port": 0, "clients": [...], "resources": {...}, "accounts": {...}}'
//
// The JSON argument (or the PODGATE_OIDC_PROVIDER_CONFIG environment variable) is optional:
//   port       loopback port to listen on; 0 picks a free one [0]
//   clients    oidc-provider client metadata, used as given [DEFAULT_CLIENTS below]
//   resources  resource indicator -> {audience, scope, ttl}: access tokens for it are RFC 9068
//              JWTs (`typ: at+jwt`) with that audience [DEFAULT_RESOURCES below]
//   accounts   account id -> extra claims (e.g. {"email_verified": "true"}); every other login
//              name signs in too, as sub = the login, email = login@example.test, verified
//   claims     scope -> claims it releases [{"openid": ["sub"], "email": ["email", "email_verified"]}]
//   id_token_ttl  seconds [3600]
//
// When it listens it prints one line on stdout: `ready {"issuer": "http://127.0.0.1:PORT", ...}`.
// Sign-in goes through oidc-provider's dev interactions over plain http: GET /auth redirects to
// /interaction/UID (a login form: POST prompt=login, login, password), then to a consent form
// (POST prompt=consent), then to the client's redirect_uri with the code.
//
// Test-only routes (never part of a real provider):
//   POST /__test/rotate  {"keep_old": false}  new signing keys (new kids); with keep_old the old
//                        public keys stay published but are no longer used to sign
//   GET  /__test/keys    the kids published and the kid that signs
import { createServer } from 'node:http';
import { createPrivateKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const DEFAULT_CLIENTS = [
  {
    // A confidential web client; also allowed client_credentials.
    client_id: 'podgate-web',
    client_secret: 'podgate-web-secret',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    // A public client (a CLI: PKCE, no secret).
    client_id: 'podgate-cli',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  },
  {
    // Another application of the same issuer that podgate does not trust.
    client_id: 'other-app',
    client_secret: 'other-app-secret',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
];

const DEFAULT_RESOURCES = {
  // An API of the same issuer.
  'https://api.example.test': { audience: 'https://api.example.test', scope: 'api:read' },
  // An API whose access tokens name podgate's own client id as their audience, as providers do
  // when a client asks for a token for itself: an at+jwt whose aud is a client podgate trusts.
  'urn:podgate:self': { audience: 'podgate-web', scope: 'self:read' },
};

const raw = process.argv[2] ?? process.env.PODGATE_OIDC_PROVIDER_CONFIG ?? '{}';
const options = JSON.parse(raw);
const clients = options.clients ?? DEFAULT_CLIENTS;
const resources = options.resources ?? DEFAULT_RESOURCES;
const accounts = options.accounts ?? {};
const claims = options.claims ?? { openid: ['sub'], email: ['email', 'email_verified'] };
const idTokenTtl = options.id_token_ttl ?? 3600;

// The key comes out of the generation as PEM and is exported as a JWK from a key object of its
// own. Exporting the generated key object itself can deadlock Node 20 at start: a garbage
// collection during the export destroys the generation job, which waits for the lock the export
// holds on the key they share.
function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const jwk = createPrivateKey(privateKey).export({ format: 'jwk' });
  return { ...jwk, kid: `rsa-${randomUUID()}`, use: 'sig', alg: 'RS256' };
}

// The first key signs; the others are published only.
let keys = [newSigningKey()];

function configuration() {
  return {
    clients,
    jwks: { keys },
    cookies: { keys: ['podgate-test-cookie-key'] },
    claims,
    // ID tokens carry the scope's claims (email) even in the code flow.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    ttl: {
      IdToken: idTokenTtl, AccessToken: 3600, ClientCredentials: 600, Interaction: 600, Session: 3600, Grant: 3600,
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, indicator) => {
          const r = resources[indicator];
          if (!r) throw new Provider.errors.InvalidTarget();
          return {
            audience: r.audience ?? indicator,
            scope: r.scope ?? '',
            accessTokenTTL: r.ttl ?? 3600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: `${sub}@example.test`,
            email_verified: true,
            ...(accounts[sub] ?? {}),
          };
        },
      };
    },
  };
}

function makeProvider(issuer) {
  const p = new Provider(issuer, configuration());
  p.on('server_error', (_ctx, err) => console.error('oidc-provider server_error', err));
  return p;
}

function publicKeys() {
  return keys.map((k) => k.kid);
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

let provider;
let handler;
const server = createServer((req, res) => {
  if (req.url === '/__test/keys' && req.method === 'GET') {
    reply(res, 200, { kids: publicKeys(), signing: keys[0].kid });
    return;
  }
  if (req.url === '/__test/rotate' && req.method === 'POST') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const { keep_old: keepOld = false } = body ? JSON.parse(body) : {};
      keys = keepOld ? [newSigningKey(), ...keys] : [newSigningKey()];
      // oidc-provider reads its keys once: a new instance with the same issuer takes over.
      provider = makeProvider(provider.issuer);
      handler = provider.callback();
      reply(res, 200, { kids: publicKeys(), signing: keys[0].kid });
    });
    return;
  }
  handler(req, res);
});

server.listen(options.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  provider = makeProvider(issuer);
  handler = provider.callback();
  process.stdout.write(`ready ${JSON.stringify({ issuer, port, clients: clients.map((c) => c.client_id), kids: publicKeys() })}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
