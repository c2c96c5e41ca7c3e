"""Maps a Hugging Face `config.json` onto a spec's dims and options.

Spec dims and options use HF key names, so most keys map by name; an option may name another key, or a path
into a mapping or list (`rope_parameters.rope_theta`, `depths.0`), and a path that finds nothing in the config is
an error. Keys nnspec knows change the computation are refused unless the spec consumes them or they hold their
neutral value; every other unused key is a warning, so nothing in a config is silently dropped. A key the config
omits takes the default the spec states Hugging Face uses (`hf_config.defaults`), with a warning saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnspec.errors import SpecError, Warning_
from nnspec.spec.load import Spec
from nnspec.spec.source import Source, Span

# key -> values under which it does not change what the model computes
SEMANTIC_KEYS: dict[str, tuple[Any, ...]] = {
    "rope_scaling": (None,),
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "reorder_and_upcast_attn": (False,),
    "add_cross_attention": (False,),
    "is_encoder_decoder": (False,),
    "hidden_act": (),
    "activation_function": (),
    "tie_word_embeddings": (),
    "n_inner": (None,),
    "intermediate_size": (),
    "num_key_value_heads": (),
    "rope_theta": (),
    "rms_norm_eps": (),
    "layer_norm_eps": (),
    "layer_norm_epsilon": (),
    "position_embedding_type": ("absolute",),
    "sliding_window": (None,),
    "use_sliding_window": (False,),
    "qkv_bias": (False,),
    "head_dim": (None,),   # null: derived from the hidden size and the head count, as the spec does
    "rope_parameters": (),
    "rope_parameters.rope_type": ("default",),
    "rope_parameters.rope_theta": (),
}


# PretrainedConfig bookkeeping present in every config.json: never part of the computation, never warned about.
GENERIC_KEYS = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "id2label",
    "label2id", "problem_type", "chunk_size_feed_forward", "output_attentions", "output_hidden_states",
    "return_dict", "torchscript", "use_cache", "tokenizer_class", "prefix", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task",
    "tf_legacy_loss", "use_bfloat16", "pruned_heads", "cross_attention_hidden_size", "is_decoder",
})


def _flatten(config: dict[str, Any], referenced: set[str]) -> dict[str, Any]:
    """Expand mapping and list values (`rope_parameters.rope_theta`, `depths.0`) where the spec or nnspec names a
    key inside them, as deep as named; every other value stays whole."""
    out: dict[str, Any] = {}

    def expand(key: str, value: Any) -> None:
        prefix = key + "."
        if isinstance(value, (dict, list)) and any(r.startswith(prefix) for r in referenced):
            for sub, sub_value in (value.items() if isinstance(value, dict) else enumerate(value)):
                expand(prefix + str(sub), sub_value)
        else:
            out[key] = value
    for key, value in config.items():
        expand(key, value)
    return out


def _missing(config: dict[str, Any], path: str) -> str | None:
    """Why `path` finds nothing in `config` though its first key is there (`depths has 4 entries`); None when
    the config lacks the first key altogether."""
    first, *rest = path.split(".")
    if first not in config:
        return None
    value, where = config[first], first
    for part in rest:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, list):
            return f"{where} is a list of {len(value)} entries, indexed 0 to {len(value) - 1}"
        elif isinstance(value, dict):
            return f"{where} has no key '{part}' (it has: {', '.join(map(str, value)) or 'none'})"
        else:
            return f"{where} is {json.dumps(value)}, not a list or mapping"
        where += "." + part
    return f"{where} is {json.dumps(value)}"


MAX_CONFIG_BYTES = 16 << 20  # config.json files with 20k-class id2label tables are about 1 MB


def load_config(path: str | Path) -> tuple[dict[str, Any], Source]:
    from nnspec.spec import strict_json
    from nnspec.spec.load import read_bounded

    try:
        data = read_bounded(Path(path), str(path), MAX_CONFIG_BYTES)  # /dev/zero is refused, not read forever
    except OSError as e:  # a usage error (exit 2), like a spec that cannot be read
        raise FileNotFoundError(f"cannot read config {str(path)!r}: {e.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        source = Source(str(path), data[: e.start].decode("utf-8"))
        raise SpecError("E006", f"config is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                        source.span(len(source.text), len(source.text) + 1)) from None
    source = Source(str(path), text)
    try:
        config = strict_json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError("E022", f"config is not valid JSON: {e.msg}", source.span(e.pos, e.pos + 1)) from None
    except strict_json.JSONProblem as e:   # a key twice, or a 5,000-digit integer
        at = _top_level_key_spans_or_none(source, e.key)
        raise SpecError("E022", f"config holds {e.what}", at or source.span(0, 1)) from None
    except RecursionError:  # json nests recursively: a bracket bomb is no config
        raise SpecError("E005", "config nests too deeply", source.span(0, 1)) from None
    if not isinstance(config, dict):
        raise SpecError("E022", "config must be a JSON object", source.span(0, 1))
    return config, source


def _top_level_key_spans_or_none(source: Source, key: str | None) -> Span | None:
    """Where `key` is written (its last occurrence at the top level), if anywhere."""
    if key is None:
        return None
    try:
        return _top_level_key_spans(source).get(key)
    except (ValueError, IndexError, RecursionError):
        return None


def _top_level_key_spans(source: Source) -> dict[str, Span]:
    """The span of each key of the outermost JSON object (the last one, as `json.loads` keeps the last).

    A plain text search would find a nested key of the same name (`"text_config": {"rope_scaling": ...}`)
    first; this scans valid JSON tracking depth and strings.
    """
    text = source.text
    spans: dict[str, Span] = {}
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if depth == 1:
                k = j + 1
                while k < len(text) and text[k] in " \t\r\n":
                    k += 1
                if k < len(text) and text[k] == ":":
                    spans[json.loads(text[i:j + 1])] = source.span(i, j + 1)
            i = j + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    return spans


def map_config(spec: Spec, config: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Warning_]]:
    """Returns the overrides the config implies and warnings for keys it does not use."""
    overrides: dict[str, Any] = {}
    warnings: list[Warning_] = []
    hf_keys = {opt.hf_key: name for name, opt in spec.options.items() if opt.hf_key}
    key_spans = _top_level_key_spans(source)
    referenced = {*hf_keys, *spec.hf_require, *spec.hf_ignore, *spec.hf_defaults, *SEMANTIC_KEYS}
    if "num_labels" in spec.dims and "num_labels" not in config and isinstance(config.get("id2label"), dict):
        # PretrainedConfig stores the label count only as the size of id2label
        overrides["num_labels"] = len(config["id2label"])
    flat = _flatten(config, referenced)
    for name, opt in spec.options.items():
        why = _missing(config, opt.hf_key) if opt.hf_key and opt.hf_key not in flat else None
        if why is not None:   # `depths.7` of a 4-stage config: the spec would silently keep its default
            raise SpecError("E022", f"option {name} reads '{opt.hf_key}', which this config does not have: {why}",
                            key_spans.get(opt.hf_key.partition(".")[0]) or source.span(0, 1)).with_note(
                f"option '{name}' declared here", opt.key_span)
    defaulted: dict[str, Span] = {}
    for key, (value, where) in spec.hf_defaults.items():
        if key not in flat and key not in overrides:
            flat[key], defaulted[key] = value, where
            warnings.append(Warning_(f"the config does not set '{key}'; using {json.dumps(value)}, the default "
                                     "this spec states Hugging Face uses", where))
    for key, value in flat.items():
        span = key_spans.get(key) or key_spans.get(key.partition(".")[0]) or defaulted.get(key) or source.span(0, 1)
        if key in spec.dims:
            if value is None and not isinstance(spec.dims[key].value, int):
                continue   # null: derive it, as the spec's own formula does
            if value is None:
                raise SpecError("E022", f"'{key}' is null, which asks for it to be derived, but this spec gives dim "
                                f"{key} no formula, only the number {spec.dims[key].value}", span).with_note(
                    "dim declared here", spec.dims[key].key_span)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError("E022", f"'{key}' must be an integer for dim {key}, got {value!r}", span)
            overrides[key] = value
        elif key in spec.options or key in hf_keys:
            name = hf_keys.get(key, key)
            opt = spec.options[name]
            if opt.hf_values is not None:
                if not isinstance(value, str) or value not in opt.hf_values:
                    raise SpecError("E022", f"{key}={value!r} is not supported by this spec (it supports "
                                    f"{', '.join(map(repr, opt.hf_values))})", span).with_note(
                        f"option '{name}' declared here", opt.key_span)
                value = opt.hf_values[value]
            if opt.choices is not None and value not in opt.choices:
                raise SpecError("E022", f"{key}={value!r} is not one of option {name}'s choices {opt.choices}",
                                span).with_note("option declared here", opt.key_span)
            if type(value) is not type(opt.default) and not (isinstance(opt.default, float) and
                                                              isinstance(value, int) and not isinstance(value, bool)):
                raise SpecError("E022", f"{key}={value!r} has the wrong type for option {name} "
                                f"(default {opt.default!r})", span)
            if isinstance(value, list) and not all(isinstance(v, (bool, int, float, str)) for v in value):
                raise SpecError("E022", f"{key}={json.dumps(value)}: option {name} takes a list of numbers, "
                                "true/false or text, not nested lists or mappings", span)
            overrides[name] = float(value) if isinstance(opt.default, float) else value
        elif key in spec.hf_require:
            want, where = spec.hf_require[key]
            if value != want:
                raise SpecError("E022", f"this spec implements only {key}={json.dumps(want)}, the config has "
                                f"{json.dumps(value)}", span).with_note("required by the spec here", where)
        elif _semantic(key) and value not in SEMANTIC_KEYS.get(key, ()) and key not in spec.hf_ignore:
            raise SpecError("E022", f"{key}={json.dumps(value)} changes the computation and this spec does not "
                            "implement it", span)
        elif key not in spec.hf_ignore and key not in GENERIC_KEYS:
            warnings.append(Warning_(f"config key '{key}' is not used by this spec", span))
    return overrides, warnings


def _semantic(key: str) -> bool:
    """A key nnspec knows changes the computation, or a sub-key of one."""
    return key in SEMANTIC_KEYS or (key.partition(".")[0] in SEMANTIC_KEYS and "." in key)
