"""Parses expression-language text (from a YAML scalar) into `nnspec.spec.ast` with source spans."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import lark

from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.source import TextMap

MAX_EXPR_CHARS = 100_000
MAX_NUMBER_CHARS = 100  # a literal longer than this is no size or constant (Python refuses ints past 4,300 digits)
MAX_EXPR_DEPTH = 200  # nesting beyond this is no hand-written model; refuse before recursing

_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "STRING": "a string", "_NL": "end of line",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "EQUAL": "'='",
    "DOT": "'.'", "$END": "end of text", "PLUS": "'+'", "MINUS": "'-'", "MULOP": "an operator",
    "POWOP": "'**'", "COMPOP": "a comparison", "AUGOP": "'+='", "RETURN": "'return'", "IF": "'if'",
    "ELSE": "'else'", "NOT": "'not'", "AND": "'and'", "OR": "'or'",
}


class _DropNewlinesInBrackets:
    """Lets an expression span lines inside (), [] like Python."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[lark.Token]) -> Iterator[lark.Token]:
        depth = 0
        last_newline = False
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and not last_newline:
                    yield tok
                last_newline = last_newline or depth == 0
                continue
            last_newline = False
            if tok.value in ("(", "["):
                depth += 1
            elif tok.value in (")", "]"):
                depth = max(0, depth - 1)
            yield tok


@cache
def _parser(start: str) -> lark.Lark:
    grammar = resources.files("nnspec.spec").joinpath("grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", start=start, propagate_positions=True,
                     postlex=_DropNewlinesInBrackets(), maybe_placeholders=True)


def parse(text: str, text_map: TextMap, start: str = "start") -> Any:
    """Parse `text` from entry point `start` (start | dimexpr | typeexpr | signature)."""
    if len(text) > MAX_EXPR_CHARS:
        raise SpecError("E005", f"expression text is {len(text):,} characters; the limit is {MAX_EXPR_CHARS:,}",
                        text_map.span(0, 1))
    _refuse_deep_nesting(text, text_map)
    try:
        tree = _parser(start).parse(text)
        _refuse_deep_tree(tree, text_map)
        return _ToAst(text_map).transform(tree)
    except lark.UnexpectedInput as e:
        raise _syntax_error(e, text, text_map) from None
    except RecursionError:
        raise SpecError("E005", f"expression nests deeper than {MAX_EXPR_DEPTH} levels", text_map.span(0, 1)) from None


def _refuse_deep_tree(tree: lark.Tree, text_map: TextMap) -> None:
    """Long operator chains nest as deeply as brackets do; measure without recursing."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPR_DEPTH:
            pos = node.meta.start_pos if not getattr(node.meta, "empty", True) else 0
            raise SpecError("E005", f"expression nests deeper than {MAX_EXPR_DEPTH} levels (a chain of "
                            f"{MAX_EXPR_DEPTH}+ operators?); split it into statements", text_map.span(pos, pos + 1))
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))


def _refuse_deep_nesting(text: str, text_map: TextMap) -> None:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
            if depth > MAX_EXPR_DEPTH:
                raise SpecError("E005", f"brackets nest deeper than {MAX_EXPR_DEPTH} levels", text_map.span(i, i + 1))
        elif ch in ")]":
            depth -= 1


def _syntax_error(e: lark.UnexpectedInput, text: str, text_map: TextMap) -> SpecError:
    pos = getattr(e, "pos_in_stream", None)
    if isinstance(e, lark.UnexpectedToken):
        tok = e.token
        pos = tok.start_pos if tok.start_pos is not None else len(text)
        if tok.type == "$END":
            found = "end of text"
        elif tok.type == "_NL":
            found = "end of line"
        else:
            found = repr(str(tok))
        expected = sorted({_TOKEN_NAMES.get(t, repr(t.lower())) for t in e.expected if not t.startswith("__")})
        message = f"unexpected {found}"
        if expected and len(expected) <= 6:
            message += "; expected " + ", ".join(expected)
        length = max(1, len(str(tok))) if tok.type not in ("$END", "_NL") else 1
        return SpecError("E010", message, text_map.span(pos, pos + length))
    if isinstance(e, lark.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        return SpecError("E010", f"unexpected character {ch!r}", text_map.span(e.pos_in_stream, e.pos_in_stream + 1))
    pos = pos or 0
    return SpecError("E010", "syntax error", text_map.span(pos, pos + 1))


class _ToAst(lark.Transformer):
    def __init__(self, text_map: TextMap) -> None:
        super().__init__()
        self.map = text_map

    def _span(self, meta: Any) -> Any:
        if getattr(meta, "empty", True):
            return self.map.span(0, 1)
        return self.map.span(meta.start_pos, meta.end_pos)

    def _tok_span(self, tok: lark.Token) -> Any:
        return self.map.span(tok.start_pos, tok.end_pos)

    # lark passes (children, meta) with @v_args(meta=True); we do it by hand to keep spans.
    def __default__(self, data: str, children: list[Any], meta: Any) -> Any:
        handler = getattr(self, "_" + data, None)
        if handler is None:
            return lark.Tree(data, children, meta)
        return handler(children, self._span(meta))

    # statements
    def _start(self, c: list[Any], span: Any) -> list[ast.Stmt]:
        return [s for s in c if s is not None]

    def _assign(self, c: list[Any], span: Any) -> ast.Assign:
        return ast.Assign(c[0], c[1], span=span)

    def _exprlist(self, c: list[Any], span: Any) -> list[ast.Expr]:
        return list(c)

    def _augassign(self, c: list[Any], span: Any) -> ast.AugAssign:
        return ast.AugAssign(c[0], str(c[1])[0], c[2], span=span)

    def _return_stmt(self, c: list[Any], span: Any) -> ast.Return:
        return ast.Return(list(c), span=span)

    # expressions
    def _ternary(self, c: list[Any], span: Any) -> ast.Ternary:
        return ast.Ternary(c[1], c[0], c[2], span=span)

    def _or_(self, c: list[Any], span: Any) -> ast.BoolOp:
        return ast.BoolOp("or", c[0], c[1], span=span)

    def _and_(self, c: list[Any], span: Any) -> ast.BoolOp:
        return ast.BoolOp("and", c[0], c[1], span=span)

    def _not_(self, c: list[Any], span: Any) -> ast.Not:
        return ast.Not(c[0], span=span)

    def _compare(self, c: list[Any], span: Any) -> ast.Compare:
        return ast.Compare(str(c[1]), c[0], c[2], span=span)

    def _member(self, c: list[Any], span: Any) -> ast.Compare:
        return ast.Compare("in", c[0], c[1], span=span)   # `i in mlp_only_layers`: a list option holds i

    def _binop(self, c: list[Any], span: Any) -> ast.BinOp:
        return ast.BinOp(str(c[1]), c[0], c[2], span=span)

    def _unary(self, c: list[Any], span: Any) -> ast.Unary:
        return ast.Unary(str(c[0]), c[1], span=span)

    def _call(self, c: list[Any], span: Any) -> ast.Call:
        func, args = c[0], c[1] or []
        pos = [a for a in args if not isinstance(a, ast.Kwarg)]
        kws = [a for a in args if isinstance(a, ast.Kwarg)]
        seen: set[str] = set()
        for a in args:
            if isinstance(a, ast.Kwarg):
                if a.name in seen:
                    raise SpecError("E019", f"keyword argument '{a.name}' given twice", a.span)
                seen.add(a.name)
            elif seen:
                raise SpecError("E010", "positional argument after keyword argument", a.span)
        return ast.Call(func, pos, kws, span=span)

    def _args(self, c: list[Any], span: Any) -> list[Any]:
        return list(c)

    def _kwarg(self, c: list[Any], span: Any) -> ast.Kwarg:
        return ast.Kwarg(str(c[0]), c[1], span=self._tok_span(c[0]))

    def _annotate(self, c: list[Any], span: Any) -> ast.Annotate:
        return ast.Annotate(c[0], c[1], span=span)

    def _attr(self, c: list[Any], span: Any) -> ast.Attr:
        return ast.Attr(c[0], str(c[1]), span=span)

    def _number(self, c: list[Any], span: Any) -> ast.Num:
        text = str(c[0])
        _digits(text, span)
        value: int | float = int(text) if text.isdigit() else float(text)
        return ast.Num(value, span=span)

    def _tuple(self, c: list[Any], span: Any) -> ast.Tuple:
        return ast.Tuple([x for x in c if x is not None], span=span)

    def _name(self, c: list[Any], span: Any) -> ast.Name:
        return ast.Name(str(c[0]), span=span)

    def _string(self, c: list[Any], span: Any) -> ast.Str:
        return ast.Str(str(c[0])[1:-1], span=span)

    # axes
    def _axes(self, c: list[Any], span: Any) -> list[ast.AxisItem]:
        return [a for a in c if a is not None]

    def _axis_name(self, c: list[Any], span: Any) -> ast.AxisName:
        name = str(c[0])
        if name.startswith("__"):  # a free dim becomes a variable in generated code: no dunders, like every name
            raise SpecError("E004", f"axis '{name}' is a reserved name (it starts with __); choose another", span)
        return ast.AxisName(name, span=span)

    def _axis_int(self, c: list[Any], span: Any) -> ast.AxisInt:
        _digits(str(c[0]), span)
        return ast.AxisInt(int(str(c[0])), span=span)

    def _axis_group(self, c: list[Any], span: Any) -> ast.AxisGroup:
        return ast.AxisGroup(list(c), span=span)

    def _axis_expr(self, c: list[Any], span: Any) -> ast.AxisExpr:
        return ast.AxisExpr(c[0], span=span)

    # other entry points
    def _dimexpr(self, c: list[Any], span: Any) -> ast.Expr:
        return c[0]

    def _typeexpr(self, c: list[Any], span: Any) -> ast.TypeExpr:
        return ast.TypeExpr(str(c[0]), self._tok_span(c[0]), c[1], span=span)

    def _signature(self, c: list[Any], span: Any) -> ast.Signature:
        return ast.Signature(str(c[0]), c[1] or [], span=span)

    def _params(self, c: list[Any], span: Any) -> list[ast.Param]:
        return list(c)

    def _param(self, c: list[Any], span: Any) -> ast.Param:
        return ast.Param(str(c[0]), c[1], c[2], span=span)


def _digits(text: str, span: Any) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise SpecError("E023", f"this number has {len(text):,} characters; no size or constant needs more than "
                        f"{MAX_NUMBER_CHARS}", span)
