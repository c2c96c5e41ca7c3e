"""Safe, located loading: what the YAML layer refuses, and where every error points.

Each test passes spec *text* (it contains a newline, so its source name is `<string>`) or writes a file
under tmp_path, and asserts the error code and, where a place is meaningful, the exact line and column,
counted by hand from the text in the test (1-based; columns count characters).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import nnspec
from nnspec.spec.yaml_loader import MAX_BYTES, MAX_DEPTH, MAX_NODES

# A small valid spec. Line numbers below are counted from this text:
#   1 nnspec: 1
#   2 name: m
#   3 dims:
#   4   d: 8
#   5 inputs:
#   6   x: float32[B, d]
#   7 outputs:
#   8   y: float32[B, d]
#   9 body: |
#  10   y = relu(x)
HEAD = """nnspec: 1
name: m
dims:
  d: 8
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
"""
SPEC = HEAD + "body: |\n  y = relu(x)\n"


def error(spec: str | Path) -> nnspec.SpecError:
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(spec)
    return info.value


def where(err: nnspec.SpecError) -> tuple[str, int, int]:
    assert err.span is not None, err
    return err.code, err.span.line, err.span.col


def test_the_base_spec_is_valid() -> None:
    assert nnspec.check(SPEC).params == 0


# ---- structural limits (E005) --------------------------------------------------------------------------

def _billion_laughs(levels: int = 9, fan: int = 10) -> str:
    """`a` holds 10 strings, `b` 10 references to `a`, ... : 10**9 values once expanded, ~1 KB of text."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(["lol"] * fan) + "]"]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_without_expanding_it() -> None:
    text = _billion_laughs()
    assert len(text) < 2_000
    err = error(text)
    assert err.code == "E005"
    assert f"{MAX_NODES:,}" in err.message and "aliases" in err.message
    assert err.span is not None and err.span.source.name == "<string>"


def test_alias_bomb_through_mappings_is_refused() -> None:
    keys = ", ".join(f"k{i}: lol" for i in range(10))
    text = f"a: &a {{{keys}}}\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} {{" + ", ".join(f"k{i}: *{prev}" for i in range(10)) + "}\n"
    assert error(text).code == "E005"


def test_aliases_within_the_limits_are_fine() -> None:
    text = HEAD.replace("x: float32[B, d]", "x: &t float32[B, d]").replace("y: float32[B, d]", "y: *t")
    assert nnspec.check(text + "body: |\n  y = relu(x)\n").params == 0


def test_file_over_one_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"[" * (MAX_BYTES + 1))  # would be a YAML syntax error (E001) if it were parsed
    err = error(path)
    assert where(err) == ("E005", 1, 1)
    assert f"{MAX_BYTES + 1:,} bytes" in err.message and f"{MAX_BYTES:,}" in err.message
    assert err.span is not None and err.span.source.name == str(path)


def test_text_over_one_mib_is_refused_before_parsing() -> None:
    err = error("nnspec: 1\n" + "\x00" * MAX_BYTES)  # a NUL would be E006 if the text were decoded
    assert where(err) == ("E005", 1, 1)


def test_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    data = SPEC.encode()
    data += b"#" * (MAX_BYTES - len(data) - 1) + b"\n"
    assert len(data) == MAX_BYTES
    path = tmp_path / "padded.yaml"
    path.write_bytes(data)
    assert nnspec.check(path).params == 0


def test_flow_nesting_deeper_than_the_limit() -> None:
    # root mapping: depth 0; its value: depth 1; the k-th '[' is at depth k and column 3 + k
    err = error("a: " + "[" * (MAX_DEPTH + 6) + "]" * (MAX_DEPTH + 6) + "\n")
    assert where(err) == ("E005", 1, 3 + MAX_DEPTH + 1)
    assert f"{MAX_DEPTH} levels" in err.message


def test_nesting_at_the_limit_is_not_refused() -> None:
    err = error("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n")
    assert err.code != "E005"  # it gets as far as the schema: `a` is not a spec key


def test_block_nesting_deeper_than_the_limit() -> None:
    # line i+1 holds key k{i} at depth i+1, indented 2*i: k64 (depth 65) is line 65, column 129
    text = "".join("  " * i + f"k{i}:\n" for i in range(70)) + "  " * 70 + "v\n"
    assert where(error(text)) == ("E005", MAX_DEPTH + 1, 2 * MAX_DEPTH + 1)


def test_very_deep_nesting_is_a_spec_error_not_a_crash() -> None:
    assert error("a: " + "[" * 1000 + "]" * 1000 + "\n").code == "E005"


def test_long_operator_chain_is_not_a_crash() -> None:
    text = HEAD + "body: |\n  y = x" + " + x" * 1000 + "\n"
    assert error(text).code == "E005"


# ---- unreadable input (E006) ---------------------------------------------------------------------------

def test_invalid_utf8_points_at_the_byte(tmp_path: Path) -> None:
    # line 2 is `name: éa` then 0xff: `é` is one character (two bytes), so the bad byte is column 9
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"nnspec: 1\nname: \xc3\xa9a\xff\n")
    err = error(path)
    assert where(err) == ("E006", 2, 9)
    assert "UTF-8" in err.message and "0xff" in err.message
    assert str(err).startswith(f"{path}:2:9: error[E006]")


def test_latin1_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(SPEC.replace("name: m", "name: m\ndoc: caf\xe9").encode("latin-1"))
    assert where(error(path)) == ("E006", 3, 9)


def test_nul_byte_is_refused_with_its_place() -> None:
    err = error("nnspec: 1\nname: €ab\x00c\n")
    assert where(err) == ("E006", 2, 10)
    assert "NUL" in err.message


def test_nul_byte_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    assert where(error(path)) == ("E006", 1, 8)


def test_tab_indentation_is_refused() -> None:
    err = error(SPEC.replace("\n  x: float32", "\n\tx: float32"))
    assert where(err) == ("E006", 6, 1)
    assert "tab" in err.message


def test_tab_after_spaces_in_indentation_is_refused() -> None:
    assert where(error(SPEC.replace("\n  y = relu", "\n  \ty = relu"))) == ("E006", 10, 3)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + SPEC.encode())
    assert nnspec.check(path).params == 0
    assert nnspec.check("\ufeff" + SPEC).params == 0


def test_bom_does_not_shift_columns(tmp_path: Path) -> None:
    path = tmp_path / "bom2.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + SPEC.replace("nnspec: 1", "nnspec: 2").encode())
    assert where(error(path)) == ("E007", 1, 9)


# ---- duplicate keys (E002) -----------------------------------------------------------------------------

def test_duplicate_top_level_key_notes_the_first() -> None:
    err = error(SPEC + "body: |\n  y = x\n")
    assert where(err) == ("E002", 11, 1)
    assert len(err.notes) == 1 and err.notes[0].span is not None
    assert (err.notes[0].span.line, err.notes[0].span.col) == (9, 1)


def test_duplicate_key_nested_two_levels() -> None:
    text = HEAD + """options:
  act:
    default: relu
    choices: [relu, gelu]
    default: gelu
body: |
  y = act(x)
"""
    err = error(text)
    assert where(err) == ("E002", 13, 5)
    assert "'default'" in err.message
    note = err.notes[0]
    assert note.message == "first defined here" and note.span is not None
    assert (note.span.line, note.span.col) == (11, 5)
    assert "first defined here" in str(err) and "<string>:11:5: note" in str(err)


def test_duplicate_key_nested_three_levels_in_flow_style() -> None:
    text = HEAD + """options:
  act:
    default: relu
    hf: {key: hidden_act, values: {relu: relu, gelu: relu, relu: gelu}}
body: |
  y = act(x)
"""
    err = error(text)
    #    12 |     hf: {key: hidden_act, values: {relu: relu, gelu: relu, relu: gelu}}
    #       first `relu` key at column 36, the second at column 60
    assert where(err) == ("E002", 12, 60)
    assert err.notes[0].span is not None and (err.notes[0].span.line, err.notes[0].span.col) == (12, 36)


def test_duplicate_dim() -> None:
    err = error(SPEC.replace("  d: 8\n", "  d: 8\n  e: 4\n  d: 16\n"))
    assert where(err) == ("E002", 6, 3)
    assert err.notes[0].span is not None and err.notes[0].span.line == 4


# ---- tags and merge keys -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "!!python/object:os.system m",
    "!!python/name:os.system",
    "!!python/object/apply:os.system echo",
    "!!binary bQ==",
    "!custom m",
    "!!timestamp 2001-12-14",
])
def test_tagged_scalars_are_refused(value: str) -> None:
    # A tag is well-formed YAML (so not E001); the value is of a kind a spec cannot hold: E004.
    # Nothing is constructed: the safe loader has no constructor for python/* tags at all.
    err = error(SPEC.replace("name: m", f"name: {value}"))
    assert where(err) == ("E004", 2, 7)


def test_tagged_collections_are_refused() -> None:
    # no Python object is built either way (SafeLoader never does), but the tag must not be dropped quietly
    err = error(SPEC.replace("dims:\n", "dims: !!python/object/new:collections.OrderedDict\n"))
    assert where(err) == ("E004", 3, 7)


def test_merge_key_is_refused() -> None:
    text = HEAD.replace("dims:", "dims: &base") + """options:
  <<: *base
body: |
  y = relu(x)
"""
    err = error(text)
    assert where(err) == ("E004", 10, 3)
    assert "<<" in err.message


# ---- schema errors mapped to spans ---------------------------------------------------------------------

OPTION = HEAD + """options:
  act:
    default: relu
    choices: [relu, gelu, [silu]]
body: |
  y = act(x)
"""


def test_wrong_type_deep_in_choices_points_at_the_value() -> None:
    err = error(OPTION)
    #    12 |     choices: [relu, gelu, [silu]]   -> `[silu]` starts at column 27
    assert where(err) == ("E004", 12, 27)
    assert "options.act.choices" in err.message


def test_wrong_type_of_a_dim_points_at_the_value() -> None:
    err = error(SPEC.replace("d: 8", "d: [8]"))
    assert where(err) == ("E004", 4, 6)
    assert "'dims.d' must be an integer or a string" in err.message


def test_wrong_type_in_inputs() -> None:
    err = error(SPEC.replace("x: float32[B, d]", "x: [float32, B, d]"))
    assert where(err) == ("E004", 6, 6)
    assert "inputs.x" in err.message


def test_unknown_top_level_key_suggests() -> None:
    err = error(SPEC.replace("dims:", "dism:"))
    assert where(err) == ("E003", 3, 1)
    assert "did you mean 'dims'?" in err.message


def test_unknown_nested_key_suggests() -> None:
    err = error(OPTION.replace("    choices: [relu, gelu, [silu]]", "    choises: [relu, gelu]"))
    assert where(err) == ("E003", 12, 5)
    assert "unknown key 'choises' in 'options.act'; did you mean 'choices'?" in err.message


def test_unknown_key_without_a_close_match_lists_the_allowed_ones() -> None:
    err = error(SPEC + "hf_config:\n  zzz: 1\n")
    assert where(err) == ("E003", 12, 3)
    assert "ignore" in err.message and "require" in err.message


# an unknown key at every level of the schema, with the position of the key (counted by hand) and its hint
@pytest.mark.parametrize(("text", "at", "words"), [
    # 6 `  x:`, 7 `    tpye: float32[B, d]`: the key at column 5
    (SPEC.replace("  x: float32[B, d]", "  x:\n    tpye: float32[B, d]"), (7, 5),
     "unknown key 'tpye' in 'inputs.x'; did you mean 'type'?"),
    # 6 `  x: {type: 'float32[B, d]', defualt: 0}`: the second key at column 30
    (SPEC.replace("  x: float32[B, d]", "  x: {type: 'float32[B, d]', defualt: 0}"), (6, 30),
     "unknown key 'defualt' in 'inputs.x'; did you mean 'default'?"),
    (SPEC.replace("  x: float32[B, d]", "  x: {type: 'float32[B, d]', zzz: 0}"), (6, 30),
     "unknown key 'zzz' in 'inputs.x'; allowed keys are type, default, doc"),
    # 11 `options: {a: {default: 1, hf: {kye: a}}}`: `kye` at column 32
    (SPEC + "options: {a: {default: 1, hf: {kye: a}}}\n", (11, 32),
     "unknown key 'kye' in 'options.a.hf'; did you mean 'key'?"),
    (SPEC + "hf_config: {ignroe: [a]}\n", (11, 13), "unknown key 'ignroe' in 'hf_config'; did you mean 'ignore'?"),
    (SPEC.replace("nnspec: 1", "nnspec: 1\nouptuts: {}"), (2, 1), "unknown key 'ouptuts'; did you mean 'outputs'?"),
])
def test_unknown_keys_everywhere_are_located_with_a_hint(text: str, at: tuple[int, int], words: str) -> None:
    err = error(text)
    assert where(err) == ("E003", *at)
    assert err.message == words


def test_unknown_key_in_an_included_file_suggests(tmp_path: Path) -> None:
    (tmp_path / "lib.yaml").write_text("nnspec: 1\nblokcs: {}\n")
    (tmp_path / "main.yaml").write_text(SPEC.replace("inputs:", "include: [lib.yaml]\ninputs:"))
    err = error(tmp_path / "main.yaml")
    assert where(err) == ("E003", 2, 1) and err.span is not None and err.span.source.name.endswith("lib.yaml")
    assert "did you mean 'blocks'?" in err.message


def test_missing_required_key() -> None:
    err = error(SPEC.replace("name: m\n", ""))
    assert err.code == "E008" and "'name'" in err.message


# ---- expression spans inside YAML scalars --------------------------------------------------------------

def test_error_in_literal_block_maps_exactly() -> None:
    text = HEAD + "body: |\n  h = relu(x)\n\n  # a comment\n  y = h + zork\n"
    #   9 body: |   10 h = ...   11 (blank)   12 # a comment   13 `  y = h + zork`: z at column 11
    err = error(text)
    assert where(err) == ("E011", 13, 11)
    assert err.span is not None and (err.span.end_line, err.span.end_col) == (13, 15)


def test_syntax_error_in_literal_block_maps_exactly() -> None:
    err = error(HEAD + "body: |\n  h = relu(x)\n  y = h +* x\n")
    #  11 `  y = h +* x`: the unexpected `*` is column 10
    assert where(err) == ("E010", 11, 10)


def test_error_in_block_body_with_deeper_indentation() -> None:
    text = HEAD + """blocks:
  f(x): |
    # comment
    h = relu(x)

    return h + zork
body: |
  y = f(x)
"""
    #  14 `    return h + zork`: z at column 16
    assert where(error(text)) == ("E011", 14, 16)


def test_error_in_block_signature_key() -> None:
    text = HEAD + "blocks:\n  f(x, d=zork): |\n    return x\nbody: |\n  y = f(x)\n"
    #  10 `  f(x, d=zork): |`: the default `zork` is column 10
    assert where(error(text)) == ("E011", 10, 10)


def test_duplicate_block_parameter_is_refused() -> None:
    text = HEAD + "blocks:\n  f(x, x): |\n    return x\nbody: |\n  y = f(x)\n"
    #  10 `  f(x, x): |`: the second `x` is column 8
    assert where(error(text)) == ("E024", 10, 8)


@pytest.mark.parametrize("indicator", ["|-", "|+", "|2"])
def test_literal_block_indicators_map_exactly(indicator: str) -> None:
    text = HEAD + f"body: {indicator}\n    h = relu(x)\n    y = h + zork\n"
    #  11 `    y = h + zork`: z at column 13
    assert where(error(text)) == ("E011", 11, 13)


def test_folded_scalar_reports_the_scalar_start() -> None:
    text = HEAD + "body: >\n  h = relu(x)\n\n  y = h + zork\n"
    # folding loses exact columns; the error is reported where the scalar starts: the `>` on line 9
    err = error(text)
    assert where(err) == ("E011", 9, 7)
    assert "zork" in err.message


def test_single_line_scalars_map_exactly() -> None:
    assert where(error(HEAD + "body: y = relu(x) + zork\n")) == ("E011", 9, 21)
    assert where(error(HEAD + 'body: "y = relu(x) + zork"\n')) == ("E011", 9, 22)
    assert where(error(HEAD + "body: 'y = relu(x) + zork'\n")) == ("E011", 9, 22)


def test_error_in_dim_expression_and_type_string() -> None:
    assert where(error(SPEC.replace("d: 8", "d: 8\n  e: d // zork"))) == ("E011", 5, 11)
    err = error(SPEC.replace("x: float32[B, d]", "x: floot32[B, d]"))
    assert err.span is not None and (err.span.line, err.span.col) == (6, 6)


def test_dunder_axis_name_in_a_declared_type_is_reserved() -> None:
    # a free dim becomes a name in generated code (`__builtins__ = torch.export.Dim(...)`): refused like every
    # other dunder name.  6 `  x: float32[__builtins__, d]`: the axis at column 14
    err = error(SPEC.replace("float32[B, d]", "float32[__builtins__, d]"))
    assert where(err) == ("E004", 6, 14) and "reserved" in err.message
