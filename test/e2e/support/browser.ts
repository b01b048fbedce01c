// Debian's Chromium through playwright-core, as the UI tests drive it: a fresh profile, headless,
// nothing fetched from anywhere but the pages the test opens. Closed (and its profile removed)
// by the test's cleanup.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Page } from 'playwright-core';
import { registerCleanup } from './cleanup.js';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A page of a new Chromium (1280×800 unless told). */
export async function openBrowser(viewport = { width: 1280, height: 800 }): Promise<Page> {
  const profile = mkdtempSync(join(tmpdir(), 'bchrome-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
  });
  registerCleanup(async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  });
  return browser.newPage();
}

/** Signs in to Berth's UI at apiUrl with the admin token; resolves once the Agents page is there. */
export async function signIn(page: Page, apiUrl: string, token: string): Promise<void> {
  await page.goto(`${apiUrl}/ui/`);
  await page.locator('#login input[name=token]').fill(token);
  await page.locator('#login button[type=submit]').click();
  await page.locator('#agents').waitFor();
}
