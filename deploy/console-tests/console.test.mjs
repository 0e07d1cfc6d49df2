// The console in a real browser (Debian's chromium, driven by playwright-core) against a
// real dfe-api and workers: the operator's story, step by step. Started by the dfe-tests
// crate (tests/tests/e2e/console.rs), which starts the system and passes:
//
//   DFE_API_URL          the api, e.g. http://127.0.0.1:43117
//   DFE_TOKEN            a token with every scope
//   DFE_TOKEN_READONLY   a token with the read scope alone
//   DFE_OWNER            the owner id to provision for
//   DFE_INSTANCE         a fresh instance id to provision, export and deprovision
//   DFE_HOST             a Docker host id to cordon (and uncordon)
//   DFE_SCREENSHOTS      where to write console-*.png (optional)
//   CHROMIUM             the browser (default /usr/bin/chromium)
//
// Prints one "ok - …" line per step and exits 0, or prints "not ok - …" with the reason
// (and a screenshot of the page in DFE_SCREENSHOTS/failure.png) and exits 1.
import { chromium } from 'playwright-core';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const api = env('DFE_API_URL');
const token = env('DFE_TOKEN');
const readonly = env('DFE_TOKEN_READONLY');
const owner = env('DFE_OWNER');
const instance = env('DFE_INSTANCE');
const host = env('DFE_HOST');
const shots = process.env.DFE_SCREENSHOTS || '';
const JOB = 120_000; // a provision, export or deprovision of a real instance, at most

if (shots) mkdirSync(shots, { recursive: true });

let step = 'launching chromium';
const ok = (what) => console.log(`ok - ${what}`);
const expect = (cond, what) => { if (!cond) throw new Error(what); };

async function rest(method, path, body, bearer = token) {
  const res = await fetch(api + path, {
    method,
    headers: { Authorization: `Bearer ${bearer}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  return { status: res.status, json, text };
}

async function shot(page, name) {
  if (!shots) return;
  // The page as it stands, without the notices of what was just done.
  await page.evaluate(() => { document.querySelectorAll('.toast').forEach((t) => t.remove()); window.scrollTo(0, 0); });
  await page.screenshot({ path: join(shots, `console-${name}.png`), fullPage: true });
}

async function signIn(page, bearer) {
  await page.goto(`${api}/console`);
  await page.locator('#token').fill(bearer);
  await page.locator('#token').press('Enter');
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // Root in a container has no user namespaces for chromium's sandbox.
  args: ['--no-sandbox'],
});
// A time zone far from UTC, to see the console show times in the browser's.
const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, timezoneId: 'Asia/Tokyo', acceptDownloads: true });
const page = await context.newPage();
const errors = [];
page.on('pageerror', (e) => errors.push(String(e)));
page.on('console', (m) => { if (m.type() === 'error' && !/status of 40[13]/.test(m.text())) errors.push(m.text()); });

try {
  step = 'a wrong token is refused with a clear message';
  await signIn(page, 'not-a-token-of-this-api');
  await page.locator('#signin-error').filter({ hasText: 'does not accept this token' }).waitFor();
  expect(await page.locator('#nav').isHidden(), 'the navigation shows for a wrong token');
  expect((await page.evaluate(() => sessionStorage.length)) === 0, 'a wrong token was kept');
  ok(step);

  step = 'signing in with a token shows the fleet overview';
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('.fragment h1', { hasText: 'Fleet overview' }).waitFor();
  await page.locator('#live[data-state="live"]').waitFor();
  expect((await context.cookies()).length === 0, 'the console set a cookie');
  expect(!page.url().includes(token), 'the token is in the URL');
  expect(await page.evaluate(() => sessionStorage.getItem('dfe.console.token')) === token, 'the token is not in sessionStorage');
  ok(step);

  step = 'an instance provisioned through the REST API appears and turns provisioned without a reload';
  await page.getByRole('link', { name: 'Instances', exact: true }).click();
  await page.locator('.fragment h1', { hasText: 'Instances' }).waitFor();
  await page.evaluate(() => { window.notReloaded = true; });
  // Two more, with the pipeline alone (noop), so that the fleet has something to show.
  for (const more of ['a', 'b']) {
    const noop = await rest('POST', '/api/v1/ops/provision', { 'owner-id': owner, 'instance-id': `${instance}-${more}`, 'guest-location': 'noop' });
    expect(noop.status === 202, `provision answered ${noop.status}: ${noop.text}`);
  }
  const provision = await rest('POST', '/api/v1/ops/provision', { 'owner-id': owner, 'instance-id': instance });
  expect(provision.status === 202, `provision answered ${provision.status}: ${provision.text}`);
  const row = page.locator(`tr[data-instance="${instance}"]`);
  await row.waitFor({ timeout: JOB });
  await row.locator('.badge', { hasText: /^provisioned$/ }).waitFor({ timeout: JOB });
  expect(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
  const time = row.locator('time').first();
  const exact = await time.getAttribute('title');
  const iso = await time.getAttribute('datetime');
  expect(exact.includes(iso) && /GMT\+9|JST/.test(exact), `the exact time on hover is ${exact} (for ${iso})`);
  ok(step);
  await shot(page, 'instances');

  step = 'the instances view filters by state and search';
  await page.locator('select[name="state"]').selectOption('failed');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.locator('.empty', { hasText: 'No instance matches' }).waitFor();
  await page.goto(`${api}/console#/instances?q=${instance.slice(0, 12)}`);
  await row.waitFor();
  ok(step);

  step = 'the instance page shows its parts and jobs with step timings';
  await row.getByRole('link', { name: instance }).click();
  await page.locator('.fragment h1', { hasText: instance }).waitFor();
  await page.locator('#i-parts + dl dd', { hasText: `dfe-${instance}` }).first().waitFor();
  await page.locator(`tr[data-job] .steps li`, { hasText: 'storage' }).first().waitFor();
  ok(step);

  step = 'a read-only token sees no action, and a forged action request is refused';
  const viewer = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const vpage = await viewer.newPage();
  await signIn(vpage, readonly);
  await vpage.locator('.fragment h1', { hasText: 'Fleet overview' }).waitFor();
  for (const view of [`#/instances/${instance}`, '#/hosts', '#/jobs']) {
    await vpage.goto(`${api}/console${view}`);
    await vpage.locator('.fragment').waitFor();
    await vpage.locator('.fragment h1').waitFor();
    const actions = await vpage.locator('button[data-action], form[data-expiry]').count();
    expect(actions === 0, `a read-only token is offered ${actions} actions on ${view}`);
  }
  const forged = await vpage.evaluate(async ([id, hostId]) => {
    const auth = { Authorization: 'Bearer ' + sessionStorage.getItem('dfe.console.token'), 'Content-Type': 'application/json' };
    const post = (path, body) => fetch(path, { method: 'POST', headers: auth, body: body && JSON.stringify(body) });
    return [
      (await post('/api/v1/ops/export', { 'instance-id': id })).status,
      (await post('/api/v1/ops/deprovision', { 'instance-id': id })).status,
      (await post(`/api/v1/hosts/${hostId}/cordon`)).status,
    ];
  }, [instance, host]);
  expect(forged.every((s) => s === 403), `forged requests answered ${forged}`);
  await viewer.close();
  ok(step);

  step = 'exporting from the instance page shows the snapshot, which downloads';
  await page.getByRole('button', { name: 'Export' }).click();
  await page.locator('.toast', { hasText: `Export of ${instance} queued` }).waitFor();
  const snapshot = page.locator('tr[data-snapshot]').first();
  await snapshot.waitFor({ timeout: JOB });
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    snapshot.getByRole('button', { name: 'Download' }).click(),
  ]);
  expect(download.suggestedFilename().endsWith('.snapshot.tar.gz'), `downloaded ${download.suggestedFilename()}`);
  const saved = join(tmpdir(), `dfe-console-${process.pid}.tar.gz`);
  await download.saveAs(saved);
  expect(statSync(saved).size > 0, 'the downloaded snapshot is empty');
  ok(step);
  await shot(page, 'instance');
  await page.getByRole('link', { name: 'Overview' }).click();
  await page.locator('#ov-instances + ul a[href="#/instances?state=provisioned"] .count', { hasText: /^[1-9]/ }).waitFor();
  await shot(page, 'overview');

  step = 'the jobs view filters by type and shows the export';
  await page.goto(`${api}/console#/jobs?type=export&instance-id=${instance}`);
  await page.locator('tr[data-job][data-state="succeeded"]').first().waitFor();
  ok(step);
  await page.goto(`${api}/console#/jobs`);
  await page.locator('tr[data-job]').first().waitFor();
  await shot(page, 'jobs');

  step = 'cordoning a host from the hosts view, and uncordoning it';
  await page.goto(`${api}/console#/hosts`);
  const hostRow = page.locator(`tr[data-host="${host}"]`);
  await hostRow.getByRole('button', { name: 'Cordon' }).click();
  await hostRow.locator('.badge', { hasText: 'cordoned' }).waitFor();
  const cordoned = await rest('GET', `/api/v1/hosts/${host}`);
  expect(cordoned.json && cordoned.json.cordoned === true, `the host reads ${cordoned.text}`);
  await shot(page, 'hosts');
  await hostRow.getByRole('button', { name: 'Uncordon' }).click();
  await hostRow.getByRole('button', { name: 'Cordon' }).waitFor();
  ok(step);

  step = 'deprovisioning asks for a confirmation that names the instance';
  await page.goto(`${api}/console#/instances/${instance}`);
  await page.getByRole('button', { name: 'Deprovision…' }).click();
  const dialog = page.locator('#confirm');
  await dialog.waitFor();
  expect((await dialog.locator('#confirm-title').textContent()).includes(instance), 'the dialog does not name the instance');
  const confirm = dialog.getByRole('button', { name: `Deprovision ${instance}` });
  expect(await confirm.isDisabled(), 'confirmable before the instance id is typed');
  await page.keyboard.press('Escape');
  expect(await dialog.isHidden(), 'Escape does not close the dialog');
  await page.getByRole('button', { name: 'Deprovision…' }).click();
  await dialog.locator('#confirm-input').fill('not-the-id');
  expect(await confirm.isDisabled(), 'confirmable with another id typed');
  await dialog.locator('#confirm-input').fill(instance);
  await confirm.click();
  await page.locator('.fragment h1 .badge', { hasText: /^deprovisioned$/ }).waitFor({ timeout: JOB });
  ok(step);

  step = 'the live event tail shows the instance\'s events';
  await page.getByRole('link', { name: 'Events' }).click();
  for (const name of ['dfe.provisioned', 'dfe.exported', 'dfe.deprovisioned']) {
    await page.locator('#ev-rows tr', { hasText: name }).filter({ hasText: instance }).first().waitFor();
  }
  ok(step);
  await shot(page, 'events');

  step = 'the overview counts jobs of the last hour';
  await page.getByRole('link', { name: 'Overview' }).click();
  await page.locator('#ov-jobs + ul a[href="#/jobs?state=succeeded"] .count', { hasText: /^[1-9]/ }).waitFor();
  ok(step);

  step = 'on a phone the pages fit the screen';
  await page.setViewportSize({ width: 390, height: 844 });
  for (const view of ['#/', '#/instances', `#/instances/${instance}`, '#/jobs', '#/hosts', '#/events']) {
    await page.goto(`${api}/console${view}`);
    await page.locator('.fragment h1').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow <= 0, `${view} is ${overflow} px wider than a phone`);
  }
  await page.goto(`${api}/console#/instances`);
  await page.locator('.fragment h1').waitFor();
  if (shots) {
    await page.evaluate(() => { document.querySelectorAll('.toast').forEach((t) => t.remove()); window.scrollTo(0, 0); });
    await page.screenshot({ path: join(shots, 'console-phone.png') });
  }
  ok(step);

  step = 'signing out forgets the token';
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#signin').waitFor();
  expect((await page.evaluate(() => sessionStorage.length)) === 0, 'the token is still kept');
  ok(step);

  step = 'no script errors';
  expect(errors.length === 0, `the page logged: ${errors.join(' | ')}`);
  ok(step);
  await browser.close();
} catch (e) {
  console.log(`not ok - ${step}: ${e.message.split('\n')[0]}`);
  console.log(e.stack);
  if (shots) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
