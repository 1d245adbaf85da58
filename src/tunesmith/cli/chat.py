"""`tunesmith chat`: a conversation at the terminal with a tuned model (tunesmith.workflows.Chat)."""

from __future__ import annotations

from tunesmith.ui import console
from tunesmith.workflows import Chat


def interactive(chat: Chat) -> None:
    console.print("chat: empty line or Ctrl-D ends, /reset starts over")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        if text == "/reset":
            chat.history.clear()
            continue
        print(f"model> {chat.reply(text)}", flush=True)
