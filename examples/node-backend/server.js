'use strict';
// A small expense tracker: employees, expenses, file uploads, one SQLite file.
// Run it on its own (`node server.js`) or under lifeboat (`lifeboat run -- node server.js`).
//
// Environment:
//   DATABASE_PATH  the SQLite file (default ./data/expense_tracker.db)
//   UPLOADS_DIR    where uploaded files go (default ./data/uploads); NOT in SQLite: give it to
//                  lifeboat with --dir (or LIFEBOAT_DIRS) and it is backed up with the database
//   PORT           port to listen on (default 3000; 0 picks a free one)
//   HOST           address to listen on (default 127.0.0.1; use 0.0.0.0 in a container)
//
// Prints `listening on HOST:PORT` on stdout once it accepts connections.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const Database = require('better-sqlite3');

const DATABASE_PATH = process.env.DATABASE_PATH || path.join(__dirname, 'data', 'expense_tracker.db');
const UPLOADS_DIR = process.env.UPLOADS_DIR || path.join(__dirname, 'data', 'uploads');
const PORT = process.env.PORT === undefined ? 3000 : Number(process.env.PORT);
const HOST = process.env.HOST || '127.0.0.1';
const MAX_JSON_BYTES = 1 << 20;
const MAX_UPLOAD_BYTES = 20 << 20;

if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error(`PORT must be an integer from 0 to 65535, got ${JSON.stringify(process.env.PORT)}`);
  process.exit(1);
}

fs.mkdirSync(path.dirname(DATABASE_PATH), { recursive: true });
fs.mkdirSync(UPLOADS_DIR, { recursive: true });

const db = new Database(DATABASE_PATH);
// WAL mode and the default autocheckpoint: what lifeboat expects, and nothing else from it.
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.pragma('busy_timeout = 5000');
db.pragma('foreign_keys = ON');
db.exec(`
  CREATE TABLE IF NOT EXISTS employees (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
  );
  CREATE TABLE IF NOT EXISTS expenses (
    id           INTEGER PRIMARY KEY,
    employee_id  INTEGER NOT NULL REFERENCES employees(id),
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    description  TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
  );
  CREATE INDEX IF NOT EXISTS expenses_employee ON expenses(employee_id);
  CREATE TABLE IF NOT EXISTS uploads (
    name       TEXT PRIMARY KEY,
    bytes      INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
  );
`);

const q = {
  insertEmployee: db.prepare('INSERT INTO employees (name, email) VALUES (?, ?) RETURNING *'),
  employee: db.prepare('SELECT * FROM employees WHERE id = ?'),
  employees: db.prepare('SELECT * FROM employees ORDER BY id'),
  insertExpense: db.prepare(
    'INSERT INTO expenses (employee_id, amount_cents, description) VALUES (?, ?, ?) RETURNING *'),
  expense: db.prepare('SELECT * FROM expenses WHERE id = ?'),
  expenses: db.prepare('SELECT * FROM expenses ORDER BY id'),
  expensesOf: db.prepare('SELECT * FROM expenses WHERE employee_id = ? ORDER BY id'),
  upsertUpload: db.prepare(
    `INSERT INTO uploads (name, bytes) VALUES (?, ?)
     ON CONFLICT (name) DO UPDATE SET bytes = excluded.bytes, created_at = excluded.created_at
     RETURNING *`),
};

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function send(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': data.length });
  res.end(data);
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(new HttpError(413, `body larger than ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function readJson(req) {
  const body = await readBody(req, MAX_JSON_BYTES);
  try {
    const v = JSON.parse(body.toString('utf8'));
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch {
    throw new HttpError(400, 'body must be a JSON object');
  }
}

function positiveId(s) {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n <= 0) throw new HttpError(400, `bad id ${JSON.stringify(s)}`);
  return n;
}

function nonEmptyString(v, field) {
  if (typeof v !== 'string' || v.trim() === '') throw new HttpError(400, `${field} must be a non-empty string`);
  return v;
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const parts = url.pathname.split('/').filter(Boolean);
  const route = `${req.method} /${parts[0] || ''}${parts.length > 1 ? '/:x' : ''}`;
  if (parts.length > 2) throw new HttpError(404, 'not found');

  switch (route) {
    case 'GET /healthz':
      db.prepare('SELECT 1').get();
      return send(res, 200, { ok: true, pid: process.pid });

    case 'POST /employees': {
      const b = await readJson(req);
      const name = nonEmptyString(b.name, 'name');
      const email = nonEmptyString(b.email, 'email');
      try {
        // better-sqlite3 is synchronous: this returns once the transaction has committed.
        return send(res, 201, q.insertEmployee.get(name, email));
      } catch (e) {
        if (e.code === 'SQLITE_CONSTRAINT_UNIQUE') throw new HttpError(409, `email ${email} is taken`);
        throw e;
      }
    }
    case 'GET /employees':
      return send(res, 200, q.employees.all());
    case 'GET /employees/:x': {
      const row = q.employee.get(positiveId(parts[1]));
      return row ? send(res, 200, row) : send(res, 404, { error: 'no such employee' });
    }

    case 'POST /expenses': {
      const b = await readJson(req);
      const employeeId = positiveId(b.employee_id);
      if (!Number.isSafeInteger(b.amount_cents) || b.amount_cents < 0) {
        throw new HttpError(400, 'amount_cents must be a non-negative integer');
      }
      const description = nonEmptyString(b.description, 'description');
      try {
        return send(res, 201, q.insertExpense.get(employeeId, b.amount_cents, description));
      } catch (e) {
        if (e.code === 'SQLITE_CONSTRAINT_FOREIGNKEY') throw new HttpError(400, `no employee ${employeeId}`);
        throw e;
      }
    }
    case 'GET /expenses': {
      const emp = url.searchParams.get('employee_id');
      return send(res, 200, emp === null ? q.expenses.all() : q.expensesOf.all(positiveId(emp)));
    }
    case 'GET /expenses/:x': {
      const row = q.expense.get(positiveId(parts[1]));
      return row ? send(res, 200, row) : send(res, 404, { error: 'no such expense' });
    }

    case 'POST /uploads/:x': {
      let name;
      try {
        name = decodeURIComponent(parts[1]);
      } catch {
        throw new HttpError(400, 'bad file name');
      }
      if (!/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/.test(name)) {
        throw new HttpError(400, 'file name: letters, digits, ".", "_", "-"; not starting with "."');
      }
      const body = await readBody(req, MAX_UPLOAD_BYTES);
      // Write to a temporary name, fsync, then rename: a crash never leaves half a file.
      const tmp = path.join(UPLOADS_DIR, `.${name}.${process.pid}.tmp`);
      const fd = fs.openSync(tmp, 'w');
      try {
        fs.writeSync(fd, body);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, path.join(UPLOADS_DIR, name));
      return send(res, 201, q.upsertUpload.get(name, body.length));
    }

    default:
      throw new HttpError(404, 'not found');
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    if (e instanceof HttpError) return send(res, e.status, { error: e.message });
    console.error(`${req.method} ${req.url}: ${e.stack || e}`);
    if (!res.headersSent) send(res, 500, { error: 'internal error' });
    else res.destroy();
  });
});

server.listen(PORT, HOST, () => {
  const a = server.address();
  console.log(`listening on ${a.address}:${a.port}`);
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: shutting down`);
  // Stop accepting, let requests in flight finish, then close the database and exit 0.
  const force = setTimeout(() => server.closeAllConnections(), 10_000);
  force.unref();
  server.close(() => {
    db.close();
    process.exit(0);
  });
  server.closeIdleConnections();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
