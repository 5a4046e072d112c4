"""The `text` path convertor: ids (items, users) as the last path segments, whatever
they hold."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class AnyTextConvertor(Convertor[str]):
    """The rest of the path, whatever it holds. Starlette's `path` convertor is `.*`,
    whose dot stops at a newline (and `$` matches before a final one): "/items/x%0A"
    would be looked up as "x", "/items/a%0Ab" would match no route. With every character
    captured, the id check refuses those ids with its 422 instead."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Starlette's extension point for path convertors (one registry per process); registered
# when this module is imported, before any route using `:text` compiles its path.
register_url_convertor("text", AnyTextConvertor())
