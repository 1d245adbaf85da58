"""Chats of very different lengths (one to four ticket exchanges in one conversation), so that
batching, padding and packing differences show up in the numbers."""

from __future__ import annotations

from tunesmith.data.example import Example, Message


def varied_examples(n: int, seed: int = 0) -> list[Example]:
    from tunesmith.demo.tickets import generate

    tickets = generate(n * 4, seed)
    examples = []
    for index in range(n):
        turns = 1 + (index * 7 + seed) % 4
        messages = [Message(role="system", content=tickets[0]["messages"][0]["content"])]
        for ticket in tickets[index * 4 : index * 4 + turns]:
            messages += [Message(role=m["role"], content=m["content"]) for m in ticket["messages"][1:]]
        examples.append(Example(id=f"chat-{index}", messages=messages))
    return examples
