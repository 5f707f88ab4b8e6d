// LibreChat's own balance code, driven from the Python interop tests.
//
// Usage:  node bridge.mjs <mongodb-uri> <db-name>   (or env MONGODB_URI, BRIDGE_DB)
//         env LIBRECHAT_NODE_MODULES: the node_modules folder tests/interop/node.py installed.
//
// stdin:  one JSON array of commands, e.g. [{"op": "createUser", "email": "a@x.io", ...}, ...]
// stdout: one JSON line per command, in order: {"ok": true, "result": ...} or
//         {"ok": false, "error": "message", "name": "ErrorName"}; a failed command does not
//         stop the ones after it. Everything LibreChat logs goes to stderr.
//
// Values cross in MongoDB's relaxed Extended JSON (what `bson.json_util` reads and writes):
// ObjectIds as {"$oid": "<24 hex>"}, dates as {"$date": "<ISO 8601>"}, numbers as JSON
// numbers (doubles print in the shortest form that reads back exactly). A `user` may also
// be given as a plain string; LibreChat's methods cast it the way Mongoose does.
//
// Everything below calls LibreChat's real `createModels` / `createMethods(mongoose)` from
// @librechat/data-schemas 0.0.71; nothing of LibreChat is re-implemented here. Ours are only
// the order of a chat turn (`reserveAndSpend`: reserve, spendTokens, release, as LibreChat's
// request flow does) and `validateAll`, which checks raw stored documents against LibreChat's
// schemas.

import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { join } from 'node:path';

// Results go to the real stdout; anything else that writes to stdout (LibreChat's winston
// console logger, dotenv) is sent to stderr so it cannot corrupt the protocol.
const emit = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
// No log files in the working directory (LibreChat's logger writes ./logs by default).
process.env.LOG_TO_FILE ??= 'false';

const modules = process.env.LIBRECHAT_NODE_MODULES;
if (!modules) throw new Error('set LIBRECHAT_NODE_MODULES (see tests/interop/node.py)');
const require = createRequire(join(modules, '..', 'package.json'));
const mongoose = require('mongoose');
const { createModels, createMethods } = require('@librechat/data-schemas');
const { EJSON } = mongoose.mongo.BSON;

const uri = process.argv[2] ?? process.env.MONGODB_URI;
const dbName = process.argv[3] ?? process.env.BRIDGE_DB;

// LibreChat's server does the same at startup: every model, then every method on them.
const models = createModels(mongoose);
const methods = createMethods(mongoose);
const { Balance, Transaction } = models;

/** The `balance:` section of librechat.yaml as LibreChat passes it to its methods. */
const balanceConfig = (cfg = {}) => ({ enabled: true, startBalance: 20000, ...cfg });

/** LibreChat prices tokens with per-model multipliers; `endpointTokenConfig` is how a
 * deployment overrides them (librechat.yaml custom endpoints), so tests pick exact rates. */
const txData = (c) => ({
  user: c.user,
  conversationId: c.conversationId ?? 'interop',
  model: c.model ?? 'interop-model',
  context: c.context ?? 'message',
  balance: { enabled: true },
  endpointTokenConfig: { [c.model ?? 'interop-model']: { prompt: c.prompt ?? 1, completion: c.completion ?? 1 } },
});

/** The user's balance document as LibreChat reads it (oldest first), hidden fields included. */
const readBalance = (user) =>
  Balance.findOne({ user }).sort({ _id: 1 }).select('+reservations +reservedCredits +pendingRefill').lean();

const countRows = (user) => Transaction.countDocuments({ user });

/** LibreChat's chat turn: reserve the estimate, record the usage, release the hold. */
async function reserveAndSpend(c) {
  const reservationId = c.reservationId ?? randomUUID();
  const amount = c.amount ?? c.promptTokens * (c.prompt ?? 1) + c.completionTokens * (c.completion ?? 1);
  const expiresAt = new Date(Date.now() + (c.expiresInMs ?? 60_000));
  const admission = await methods.reserveBalance({ user: c.user, reservationId, amount, expiresAt });
  if (!admission?.reserved) return { reserved: false, admission };
  const spent = await spendTokens(c);
  await methods.releaseBalanceReservation({ user: c.user, reservationId, amount });
  return { reserved: true, admission, ...spent, doc: await readBalance(c.user) };
}

/** `spendTokens` logs and swallows its errors; count the rows so a failure is reported. */
async function spendTokens(c) {
  const before = await countRows(c.user);
  await methods.spendTokens(txData(c), { promptTokens: c.promptTokens, completionTokens: c.completionTokens });
  const expected = (c.promptTokens !== undefined) + (c.completionTokens !== undefined);
  const written = (await countRows(c.user)) - before;
  if (written !== expected) throw new Error(`spendTokens wrote ${written} rows, expected ${expected} (see stderr)`);
  return { rows: written, tokenCredits: (await readBalance(c.user))?.tokenCredits };
}

// -- validateAll: every stored document against LibreChat's schemas ------------------------
// `validateSync()` alone is not enough: Mongoose casts before it validates, so a 24-hex
// *string* in `user` passes although LibreChat's `find({user: ObjectId})` never matches it.
// So each raw value (read with the plain driver, no casting) must also already have the
// BSON type the schema declares. Fields outside the schema are listed, not failed: strict
// mode ignores them on read and keeps them on disk.

const isType = {
  ObjectId: (v) => v?._bsontype === 'ObjectId',
  Number: (v) => typeof v === 'number' && Number.isFinite(v),
  String: (v) => typeof v === 'string',
  Boolean: (v) => typeof v === 'boolean',
  Date: (v) => v instanceof Date && !Number.isNaN(v.getTime()),
  Array: Array.isArray,
  Embedded: (v) => typeof v === 'object' && !Array.isArray(v),
  Mixed: () => true,
};

function typeProblems(schema, doc, prefix = '') {
  const problems = [];
  for (const [path, type] of Object.entries(schema.paths)) {
    const value = path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), doc);
    if (value == null) continue; // presence is `required`'s job, checked by validateSync
    const check = isType[type.instance];
    if (check && !check(value)) {
      const got = value?._bsontype ?? (value instanceof Date ? 'Date' : typeof value);
      problems.push({ path: prefix + path, problem: `stored as ${got}, schema says ${type.instance}`, value: String(value) });
    } else if (type.schema && type.instance === 'Array') {
      value.forEach((item, i) => problems.push(...typeProblems(type.schema, item, `${prefix}${path}.${i}.`)));
    } else if (type.schema) {
      problems.push(...typeProblems(type.schema, value, `${prefix}${path}.`));
    }
  }
  return problems;
}

async function validateCollection(Model) {
  const raw = await Model.collection.find({}).sort({ _id: 1 }).toArray();
  const known = new Set([...Object.keys(Model.schema.paths).map((p) => p.split('.')[0]), '__v']);
  const invalid = [];
  const extraFields = {};
  for (const doc of raw) {
    const problems = typeProblems(Model.schema, doc);
    const error = new Model(doc).validateSync();
    for (const [path, e] of Object.entries(error?.errors ?? {})) problems.push({ path, problem: e.message });
    if (problems.length) invalid.push({ _id: doc._id, problems });
    for (const key of Object.keys(doc)) if (!known.has(key)) extraFields[key] = (extraFields[key] ?? 0) + 1;
  }
  return { count: raw.length, invalid, extraFields };
}

// -- commands ------------------------------------------------------------------------------

const commands = {
  ping: async () => 'pong',

  /** createUser(data, balanceConfig): LibreChat's registration, with the start balance. */
  createUser: async (c) => {
    const user = await methods.createUser(
      { email: c.email, name: c.name ?? c.email, username: c.username ?? c.email, provider: 'local', emailVerified: true },
      balanceConfig(c.balance),
    );
    return { user, doc: await readBalance(user) };
  },

  /** reserveBalance: admission of one request. It also performs LibreChat's auto refill
   * (add `refillAmount`, `lastRefill = now`, a `pendingRefill` marker until its autoRefill
   * row is saved), at most once per call, when all hold: a marker left by an earlier refill
   * was settled first (its row written, the marker cleared), `autoRefillEnabled` true,
   * `refillAmount > 0`, `tokenCredits - reservedCredits - amount <= 0`, and
   * `lastRefill + refillIntervalValue refillIntervalUnit <= now` (a missing lastRefill is due). */
  reserveBalance: async (c) => {
    const reservationId = c.reservationId ?? randomUUID();
    const expiresAt = new Date(Date.now() + (c.expiresInMs ?? 60_000));
    const admission = await methods.reserveBalance({
      user: c.user, reservationId, amount: c.amount, expiresAt, initialBalance: c.initialBalance,
    });
    return { reservationId, admission, doc: await readBalance(c.user) };
  },

  releaseBalanceReservation: async (c) => {
    await methods.releaseBalanceReservation({ user: c.user, reservationId: c.reservationId, amount: c.amount });
    return { doc: await readBalance(c.user) };
  },

  /** spendTokens(txData, {promptTokens, completionTokens}) with rates `prompt`/`completion`. */
  spendTokens,
  reserveAndSpend,

  /** createTransaction(txData) with the balance enabled: one row plus its $inc-like update. */
  createTransaction: async (c) => {
    const { op: _op, ...tx } = c;
    return methods.createTransaction({ balance: { enabled: true }, ...tx });
  },

  updateBalance: async (c) =>
    methods.updateBalance({ user: c.user, incrementValue: c.incrementValue, setValues: c.setValues }),

  /** What LibreChat sees: the oldest document of the user, and how many the user has. */
  findBalance: async (c) => ({
    doc: await readBalance(c.user),
    mongooseFindOne: await Balance.findOne({ user: c.user }).lean(),
    count: await Balance.countDocuments({ user: c.user }),
  }),

  listTransactions: async (c) => Transaction.find({ user: c.user }).sort({ createdAt: 1, _id: 1 }).lean(),

  validateAll: async () => ({
    balances: await validateCollection(Balance),
    transactions: await validateCollection(Transaction),
  }),
};

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const batch = EJSON.parse(Buffer.concat(chunks).toString('utf8') || '[]', { relaxed: true });
  await mongoose.connect(uri, { dbName, serverSelectionTimeoutMS: 10_000 });
  // As at LibreChat's startup: each model creates its collection and indexes. Awaited here
  // so that a failure (such as `create` without code 48 on an existing one) is reported.
  await Promise.all(Object.values(models).map((model) => model.init()));
  try {
    for (const command of batch) {
      let line;
      try {
        const run = commands[command.op];
        if (!run) throw new Error(`unknown op ${JSON.stringify(command.op)}`);
        line = { ok: true, result: (await run(command)) ?? null };
      } catch (error) {
        line = { ok: false, error: String(error?.message ?? error), name: error?.name ?? 'Error' };
      }
      emit(EJSON.stringify(line, { relaxed: true }) + '\n');
    }
  } finally {
    await mongoose.disconnect();
  }
}

await main();
