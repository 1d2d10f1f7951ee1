"""The Chat page as a user gets it: a reply's decode speed in the browser against the command line's,
in one run.

- the command line: `python -m core chat KEY --prompt P --max-new-tokens N --ignore-eos --stats`
  in a fresh process (decode_tps; the model's int4 copy already kept beside it);
- the page: the app as the README starts it (`python -m core app`), Debian's chromium through
  Playwright on the same machine (as the browser tests), a new chat with the same prompt, the
  reply's own statistics line ("… · 14.7 tokens/s · …"), default settings (sampling on, at most
  512 new tokens); with the CPU seconds the app's process and the browser spent on that reply.

The two alternate, `--runs` times each; medians. Random weights with the catalog models' configs, as
bench/speed.py; such a model writes one long paragraph, so this measures the page's per-token cost
at its largest (a reply in Markdown blocks is cheaper to draw: docs/performance.md).

Usage: .venv/bin/python -m bench.page [--models KEY ...] [--runs 3] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
from pathlib import Path

import psutil
from playwright.sync_api import Page, expect, sync_playwright

from bench.readiness import CONFIGS, build
from bench.speed import prompt_words, run_json
from core.chat.configs import ConfigStore
from core.settings import load_settings
from core.storage.db import Database
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, running_app
from tests.fixtures.tiny_models import install_ready

PAGE_TOKENS = 512  # the page's default most new tokens a reply


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def browser_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "chromium" in " ".join(p.info["cmdline"] or [])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["qwen2.5-0.5b"], choices=list(CONFIGS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", help="the message (default: a ~100-token one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localllm-page-") as tmp:
        work = Path(tmp)
        os.environ |= {"LOCALLLM_MODELS_DIR": str(work / "models"), "LOCALLLM_DATA_DIR": str(work / "data")}
        prompt = args.prompt or "hello world " * prompt_words(100)
        for key in args.models:
            install_ready(work / "models", key, build(key, work / f"src-{key}"))
        with running_app(log_path=work / "app.log") as app, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(locale="en-US", viewport={"width": 1300, "height": 950})
            for key in args.models:
                compare(page, app.url, psutil.Process(app.process.pid), key, prompt, args.runs)
            browser.close()


def compare(page: Page, url: str, app: psutil.Process, key: str, prompt: str, runs: int) -> None:
    """Alternate the command line and the page `runs` times each on `key`; print the medians."""
    command = ["-m", "core", "chat", key, "--prompt", prompt, "--max-new-tokens", str(PAGE_TOKENS),
               "--ignore-eos", "--stats"]  # fmt: skip
    run_json(command)  # quantizes once and keeps the copy
    ConfigStore(Database(load_settings().db_url)).use_local_model(key)  # the page's chats go to it
    os.sync()
    ask(page, url, prompt)  # loads the model in the app, not timed
    cli, shown, app_cpu, browser_cpu, tokens = [], [], [], [], []
    for _ in range(runs):
        cli.append(run_json(command)["decode_tps"])
        started = cpu_seconds([app, *app.children(recursive=True)]), cpu_seconds(browser_processes())
        stats = ask(page, url, prompt)
        app_cpu.append(cpu_seconds([app, *app.children(recursive=True)]) - started[0])
        browser_cpu.append(cpu_seconds(browser_processes()) - started[1])
        shown.append(float(re.search(r"([\d.]+) tokens/s", stats).group(1)))
        tokens.append(int(re.search(r"\+ (\d+) tokens", stats).group(1)))
    print(f"\n{key}: {len(prompt)}-character message, {statistics.median(tokens):.0f} new tokens on the page "
          f"({PAGE_TOKENS} from the command line), {runs} runs each, alternating")  # fmt: skip
    for name, values in (("command line", cli), ("the page", shown)):
        print(
            f"{name:<13} {statistics.median(values):6.1f} tokens/s  ({', '.join(f'{v:.1f}' for v in values)})"
        )
    app_s, browser_s = statistics.median(app_cpu), statistics.median(browser_cpu)
    print(f"CPU seconds a reply: app {app_s:.1f}, browser {browser_s:.1f}")
    print(f"page / command line: {statistics.median(shown) / statistics.median(cli):.2f}")


def ask(page: Page, url: str, prompt: str) -> str:
    """Send `prompt` in a new chat on the page; the reply's statistics line once it is done."""
    page.goto(url)
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(prompt)
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=600_000)
    return page.get_by_text("tokens/s").last.inner_text()


if __name__ == "__main__":
    main()
