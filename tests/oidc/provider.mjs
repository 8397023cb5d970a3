// A certified OpenID provider (panva's oidc-provider) on loopback, for
// meshgov's tests: discovery, a JWKS with chosen signing keys, and JWT
// access tokens from the client_credentials grant with any claims a test
// asks for. See README.md.
//
//   node provider.mjs --port 9400 --keys-dir /tmp/keys --kids k1,k2 \
//     [--cache-control max-age=60] [--modules /opt/meshgov/oidc]
//
// Each option may also come from the environment: OIDC_PORT, OIDC_KEYS_DIR,
// OIDC_KIDS, OIDC_CACHE_CONTROL, OIDC_MODULES. Prints `ready <issuer>` on
// stdout once it listens; exits 0 on SIGTERM.

import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT },
    'keys-dir': { type: 'string', default: process.env.OIDC_KEYS_DIR },
    kids: { type: 'string', default: process.env.OIDC_KIDS },
    'cache-control': { type: 'string', default: process.env.OIDC_CACHE_CONTROL },
    // Where `npm ci` put node_modules: .ci/setup installs into
    // /opt/meshgov/oidc; by hand it is this directory.
    modules: {
      type: 'string',
      default: process.env.OIDC_MODULES ?? dirname(fileURLToPath(import.meta.url)),
    },
  },
});

const port = Number(args.port);
const keysDir = args['keys-dir'];
const kids = (args.kids ?? '').split(',').filter(Boolean);
if (!Number.isInteger(port) || port <= 0 || !keysDir || kids.length === 0) {
  console.error('usage: provider.mjs --port P --keys-dir D --kids k1[,k2...] [--cache-control V] [--modules DIR]');
  process.exit(2);
}

// ES modules ignore NODE_PATH: resolve the package in the install directory.
const resolve = createRequire(join(args.modules, 'package.json')).resolve;
const { default: Provider } = await import(pathToFileURL(resolve('oidc-provider')).href);

// The signing keys, by kid: `<keys-dir>/<kid>.json` holds the private JWK,
// made here the first time a kid is named. Only the named kids are loaded,
// so only they are published; a rotation is a restart with other kids.
mkdirSync(keysDir, { recursive: true });
const keys = kids.map((kid) => {
  const file = join(keysDir, `${kid}.json`);
  if (!existsSync(file)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
    writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  }
  return JSON.parse(readFileSync(file, 'utf8'));
});

// The claims a token request asks for: `meshgov_claims`, a JSON object in
// the form body. The token endpoint does not take `extraParams` (they are
// authorization-request parameters), but it keeps the whole parsed body.
function requestedClaims(ctx) {
  const raw = ctx?.oidc?.body?.meshgov_claims;
  if (raw === undefined) return {};
  const claims = JSON.parse(raw);
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new TypeError('meshgov_claims must be a JSON object');
  }
  return claims;
}

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  // The one client: a service that gets tokens for itself.
  clients: [{
    client_id: 'meshgov-test',
    client_secret: 'meshgov-test-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  }],
  jwks: { keys },
  // Ten minutes, the provider's default, said here so it does not log a
  // notice about it.
  ttl: { ClientCredentials: 600 },
  features: {
    clientCredentials: { enabled: true },
    // No login pages: nothing here is interactive.
    devInteractions: { enabled: false },
    // `resource=<audience>` on the token request: any absolute URI is a
    // resource server whose tokens are RS256 JWTs signed with the first kid.
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo: async (_ctx, resource) => ({
        audience: resource,
        scope: '',
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256', kid: kids[0] } },
      }),
    },
  },
  // The JWT's payload just before it is signed. The provider writes `sub`
  // (the client id for client_credentials), `iss`, `aud`, `exp`, `scope`
  // and the rest after any `extraTokenClaims`, so those could not be
  // changed there; here the requested claims win over all of them.
  formats: {
    customizers: {
      jwt: async (ctx, _token, jwt) => {
        Object.assign(jwt.payload, requestedClaims(ctx));
      },
    },
  },
  // Its own cookies sign nothing a test uses; a fixed key keeps it quiet.
  cookies: { keys: ['meshgov-test-cookies'] },
});

// Errors (a bad `meshgov_claims`, an unknown client) go to stderr, which
// the harness keeps as a log.
provider.on('server_error', (_ctx, err) => console.error('server_error:', err));
provider.on('grant.error', (_ctx, err) => console.error('grant.error:', err.message, err.error_description ?? ''));

// Optional Cache-Control on the JWKS response (for tests of key caching).
const jwksPath = new URL(provider.urlFor('jwks')).pathname;
if (args['cache-control']) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === jwksPath) ctx.set('Cache-Control', args['cache-control']);
  });
}

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
server.on('error', (err) => {
  console.error(`listen on 127.0.0.1:${port}: ${err.message}`);
  process.exit(1);
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
