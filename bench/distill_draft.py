"""Distill a small draft model from the SmolLM2-135M-Instruct target on this CPU, within a time budget.

    python bench/distill_draft.py [--budget-min 30] [--threads 2] [--force]

Output (cached; a second run prints the stored report and exits): a Hugging Face Llama directory in
the bench cache (bench/models.py: ~/.cache/sglang_ssd/bench/smollm2-draft) that SGLang
(`--speculative-draft-model-path`) and transformers load, with `distill.json` (held-out greedy
agreement, budget, data and timings).

The draft: the target's tokenizer and 49152-token vocabulary, 4 layers, hidden 192 (3 heads of 64),
input embedding and output layer initialised from the target's embedding projected onto its top
192 principal directions; about 1/11 of the target's multiply-adds per token (its output layer
dominates). Training runs the output layer over a shortlist only (every token the target ranked in
its top 8 anywhere in the data, about a third of the vocabulary) plus one extra logit fixed at 0
that stands for every other token; the saved draft's output rows outside the shortlist are 0, so
the full-vocabulary draft computes exactly what was trained (2-3x more steps in the same time).

Phases, each a share of --budget-min, all resumable (state in <cache>/distill-work):
1. data (45%): the target writes its own training text: batched greedy (and T=0.8 sampled)
   continuations, 128 tokens each and past EOS (the benchmark ignores EOS), of varied prompts made
   from templates (code tasks, HumanEval prompts 64..163 and Python standard-library docstrings,
   instructions, math word problems, chat), never the benchmark's own prompts. For every generated
   position it keeps the target's argmax and top-8 logits.
2. held-out set: the target's greedy continuations of the first 8 prompts of each benchmark set.
3. training (the rest): cross-entropy on the target's argmax plus soft cross-entropy on its top-8
   distribution, AdamW, cosine learning rate over the training time budget, checkpoint every minute.
4. report: greedy agreement = fraction of held-out positions where the draft's argmax equals the
   target's (teacher forcing on the target's greedy text), i.e. the per-token acceptance rate a of
   greedy speculative decoding on these prompts, and the implied tokens per round (1-a^(K+1))/(1-a).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
import prompt_sets  # noqa: E402

GEN_TOKENS = 128
TOPK = 8
HIDDEN, LAYERS, HEADS, INTER = 192, 4, 3, 768
SHARES = {"data": 0.25, "text": 0.15}  # training gets the rest, less held-out generation and saving


# ---------------------------------------------------------------- training prompts (not the benchmark's)
TOPICS = ["a lighthouse keeper", "the moon", "a lost key", "mountains", "a city at night", "friendship",
          "the first day of school", "a dragon who is afraid of fire", "rain", "an old library", "trains",
          "a small village", "the desert", "coffee", "a robot chef", "winter", "the internet", "a garden",
          "music", "a detective cat", "time travel", "the sea", "a birthday party", "volcanoes", "bees",
          "a secret door", "a snowstorm", "football", "a kind stranger", "the forest", "clouds", "honesty"]
FORMS = ["a short story", "a poem", "a paragraph", "a haiku", "a limerick", "a diary entry", "a short letter",
         "a news headline and summary", "a dialogue", "a riddle", "a song verse", "a fable"]
CONCEPTS = ["gravity", "inflation", "machine learning", "democracy", "the immune system", "electricity",
            "compound interest", "evolution", "the greenhouse effect", "a database", "an operating system",
            "blockchain", "DNA", "supply and demand", "tides", "the speed of light", "recursion", "encryption",
            "a neural network", "renewable energy", "plate tectonics", "the stock market", "sleep", "memory",
            "a compiler", "prime numbers", "probability", "a CPU cache", "sound waves", "magnetism"]
ACTIVITIES = ["learning to cook", "public speaking", "saving money", "writing an essay", "running a marathon",
              "growing vegetables", "learning the guitar", "traveling on a budget", "working in a team",
              "keeping a journal", "learning math", "moving to a new country", "taking good photos",
              "reading more books", "staying healthy in winter", "organizing a desk", "debugging code"]
CODE_TASKS = ["reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
              "counts the vowels in a string", "merges two sorted lists", "removes duplicates from a list",
              "computes the factorial of n", "finds the largest element of a list", "checks if a string is "
              "a palindrome", "flattens a nested list", "computes the greatest common divisor of two numbers",
              "converts Celsius to Fahrenheit", "sorts a list of dictionaries by a key", "counts word "
              "frequencies in a text", "returns the transpose of a matrix", "validates an email address",
              "computes the median of a list", "finds all pairs in a list that sum to a target",
              "implements binary search", "capitalizes every word in a sentence", "rotates a list by k",
              "checks whether two strings are anagrams", "returns the digits of an integer", "implements a "
              "stack class", "parses a CSV line into fields", "computes the running sum of a list",
              "finds the longest common prefix of strings", "converts a decimal number to binary",
              "returns the index of the first repeated character", "chunks a list into groups of size n"]
NAMES = ["Anna", "Ben", "Carlos", "Dina", "Eli", "Fatima", "George", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Marco", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["stickers", "books", "marbles", "cookies", "stamps", "pencils", "apples", "cards", "coins", "shells"]
MOODS = ["tired", "happy", "a bit lonely", "excited", "stressed", "curious", "bored", "proud", "anxious"]


def _math_prompt(r: random.Random) -> str:
    n, m = r.choice(NAMES), r.choice(NAMES)
    it = r.choice(ITEMS)
    a, b, c = r.randint(5, 90), r.randint(2, 40), r.randint(2, 12)
    forms = [
        f"{n} has {a} {it}. {n} buys {b} more and gives {c} to {m}. How many {it} does {n} have now?",
        f"{n} packs {a * c} {it} into boxes of {c}. How many boxes does {n} need?",
        f"A shop sells {it} for {c} dollars each. {n} buys {b} of them. How much does {n} pay?",
        f"{n} is {c} years old and {m} is {b} years older. How old will {m} be in {a % 10 + 1} years?",
        f"A car drives {a} kilometers per hour for {c} hours. How far does it go?",
        f"{n} earns {b} dollars a day. How many days does {n} need to earn {b * c + a} dollars?",
        f"There are {a} students and {c} buses. Each bus holds {b} students. Are there enough seats?",
        f"{n} had {a + b} {it} and lost {b}. Then {n} doubled what was left. How many {it} are there?",
        f"A rectangle is {a} cm long and {c} cm wide. What are its area and perimeter?",
        f"{n} and {m} share {a * 2} {it} so that {n} gets {c} more than {m}. How many does each get?",
    ]
    return r.choice(forms)


def _stdlib_tasks() -> list[str]:
    import bisect, calendar, collections, difflib, fnmatch, heapq, html, json as js, os.path as osp  # noqa: E401
    import shlex, statistics, string, textwrap, urllib.parse as up  # noqa: E401

    out = []
    for mod in (bisect, calendar, collections, difflib, fnmatch, heapq, html, js, osp, shlex, statistics, string,
                textwrap, up):
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            doc = inspect.getdoc(fn) or ""
            first = doc.strip().split("\n")[0].strip()
            if name.startswith("_") or len(first) < 12:
                continue
            out.append(f"Write a Python function `{name}` that does the following: {first}")
    return out


def training_prompts(seed: int) -> list[str]:
    """Deterministic shuffled list of training prompts (categories mixed)."""
    r = random.Random(seed)
    he = prompt_sets.humaneval_prompts()[64:]
    code = he + _stdlib_tasks() + [f"Write a Python function that {t}." for t in CODE_TASKS] + \
        [f"Write a Python function that {t}, with a docstring and an example." for t in CODE_TASKS]
    inst = [f"Write {f} about {t}." for f in FORMS for t in TOPICS] + \
        [f"Explain {c} in simple terms." for c in CONCEPTS] + \
        [f"Give {n} tips for {a}." for n in (3, 4, 5) for a in ACTIVITIES] + \
        [f"What is {c}? Answer in a few sentences." for c in CONCEPTS]
    chat = [f"I'm feeling {m} today. {q}" for m in MOODS for q in
            ("What should I do?", "Can you cheer me up?", "Any advice?", "Can we talk for a bit?")] + \
        [f"What do you think about {t}?" for t in TOPICS + CONCEPTS] + \
        [f"How do I get better at {a}?" for a in ACTIVITIES] + \
        [f"Tell me something interesting about {t}." for t in TOPICS + CONCEPTS]
    pools = [(code, 0.3), (inst, 0.25), (chat, 0.25), (None, 0.2)]
    prompts = []
    for _ in range(20000):
        x = r.random()
        for pool, w in pools:
            if x < w:
                prompts.append(r.choice(pool) if pool is not None else _math_prompt(r))
                break
            x -= w
        else:
            prompts.append(_math_prompt(r))
    return prompts


# ---------------------------------------------------------------- the target writes the data
@torch.inference_mode()
def teacher_generate(model, seqs: list[list[int]], n_new: int, temperature: float, pad: int, seed: int):
    """Batched continuation (left padding, KV cache), past EOS. Returns per sequence: generated ids,
    the target's argmax and top-k (ids, logits) at each generated position."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    b, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((b, L), pad, dtype=torch.long)
    mask = torch.zeros((b, L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s)
        mask[i, L - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    logits = out.logits[:, -1].float()
    gen, arg, tk_i, tk_v = [], [], [], []
    next_pos = pos[:, -1:] + 1
    for step in range(n_new):
        top = torch.topk(logits, TOPK, dim=-1)
        am = top.indices[:, 0]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=g)[:, 0]
        else:
            tok = am
        gen.append(tok)
        arg.append(am)
        tk_i.append(top.indices.to(torch.int32))
        tk_v.append(top.values.to(torch.float16))
        if step == n_new - 1:
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                    use_cache=True)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    gen, arg = torch.stack(gen, 1), torch.stack(arg, 1)
    tk_i, tk_v = torch.stack(tk_i, 1), torch.stack(tk_v, 1)
    return [{"prompt": s, "gen": gen[i].tolist(), "label": arg[i].to(torch.int32), "topi": tk_i[i],
             "topv": tk_v[i]} for i, s in enumerate(seqs)]


def package_texts(seed: int):
    """Text shipped with the installed Python: standard-library sources (code) and the long
    descriptions in installed packages' METADATA files (prose, mostly markdown), interleaved."""
    import sysconfig

    std = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    meta = sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/METADATA"))
    r = random.Random(seed)
    r.shuffle(std)
    r.shuffle(meta)
    prose = []
    for m in meta:
        body = m.read_text(errors="replace").split("\n\n", 1)
        if len(body) == 2 and len(body[1]) > 500:
            prose.append(body[1])
    for i in range(max(len(std), len(prose))):
        if i < len(prose):
            yield prose[i]
        if i < len(std):
            yield std[i].read_text(errors="replace")


@torch.inference_mode()
def teacher_label(model, chunks: list[list[int]]):
    """Teacher forcing on equal-length chunks: the target's argmax and top-k at every position."""
    ids = torch.tensor(chunks)
    logits = model(input_ids=ids).logits[:, :-1].float()
    top = torch.topk(logits, TOPK, dim=-1)
    return [{"prompt": c[:1], "gen": c[1:], "label": top.indices[i, :, 0].to(torch.int32),
             "topi": top.indices[i].to(torch.int32), "topv": top.values[i].to(torch.float16)}
            for i, c in enumerate(chunks)]


# ---------------------------------------------------------------- the draft
def make_student(target_dir: Path, target):
    from transformers import LlamaConfig, LlamaForCausalLM

    tcfg = target.config
    cfg = LlamaConfig(vocab_size=tcfg.vocab_size, hidden_size=HIDDEN, intermediate_size=INTER,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                      head_dim=HIDDEN // HEADS, max_position_embeddings=tcfg.max_position_embeddings,
                      rms_norm_eps=1e-5, rope_parameters=dict(tcfg.rope_parameters),
                      tie_word_embeddings=False, bos_token_id=tcfg.bos_token_id, eos_token_id=tcfg.eos_token_id,
                      pad_token_id=tcfg.pad_token_id, dtype="float32")
    torch.manual_seed(0)
    student = LlamaForCausalLM(cfg)
    emb = target.get_input_embeddings().weight.detach().float()
    # principal directions of the target's embedding: E_t ~ (E_t V) V^T
    cov = emb.T @ emb
    _, vecs = torch.linalg.eigh(cov)
    proj = vecs[:, -HIDDEN:].flip(-1)  # [576, HIDDEN], largest first
    with torch.no_grad():
        student.get_input_embeddings().weight.copy_(emb @ proj)
        student.get_output_embeddings().weight.copy_(emb @ proj)
    return student


class Shortlist:
    """The tokens the output layer is trained on, and the map from token id to shortlist index."""

    def __init__(self, data: list[dict], vocab: int, always: list[int]):
        ids = torch.cat([d["topi"].reshape(-1).long() for d in data] + [d["label"].long() for d in data] +
                        [torch.tensor(always, dtype=torch.long)])
        self.ids = torch.unique(ids)
        self.other = len(self.ids)  # the class of every token outside the shortlist (logit 0)
        self.index = torch.full((vocab,), self.other, dtype=torch.long)
        self.index[self.ids] = torch.arange(len(self.ids))

    def zero_the_rest(self, student) -> None:
        w = student.get_output_embeddings().weight
        keep = torch.zeros(w.shape[0], dtype=torch.bool)
        keep[self.ids] = True
        with torch.no_grad():
            w[~keep] = 0.0


def macs_per_token(cfg) -> int:
    """Multiply-adds per decoded token (projections, MLP, output layer; attention scores excluded)."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    attn = h * cfg.num_attention_heads * hd * 2 + h * cfg.num_key_value_heads * hd * 2
    return n * (attn + 3 * h * i) + h * cfg.vocab_size


def batches(data: list[dict], max_tokens: int, rng: random.Random):
    order = list(range(len(data)))
    rng.shuffle(order)
    cur, cur_len = [], 0
    for j in order:
        n = len(data[j]["prompt"]) + len(data[j]["gen"])
        if cur and (len(cur) + 1) * max(cur_len, n) > max_tokens:
            yield cur
            cur, cur_len = [], 0
        cur.append(data[j])
        cur_len = max(cur_len, n)
    if cur:
        yield cur


def loss_on(student, batch: list[dict], pad: int, soft_w: float = 1.0, grad: bool = True,
            short: "Shortlist | None" = None):
    """Returns (loss, n positions, n agreeing). Right padding; loss only at generated positions.
    With `short`, the logits are the shortlist's plus a constant 0 for every other token."""
    L = max(len(d["prompt"]) + len(d["gen"]) for d in batch)
    ids = torch.full((len(batch), L), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    rows, cols, labels, topi, topv = [], [], [], [], []
    for r, d in enumerate(batch):
        s = d["prompt"] + d["gen"]
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        p, g = len(d["prompt"]), len(d["gen"])
        rows += [r] * g
        cols += list(range(p - 1, p - 1 + g))
        labels.append(d["label"].long())
        topi.append(d["topi"].long())
        topv.append(d["topv"].float())
    h = student.model(input_ids=ids, attention_mask=mask).last_hidden_state
    h = h[torch.tensor(rows), torch.tensor(cols)]
    labels, topi, topv = torch.cat(labels), torch.cat(topi), torch.cat(topv)
    w = student.get_output_embeddings().weight
    if short is not None:
        w = w.index_select(0, short.ids)
        labels, topi = short.index[labels], short.index[topi]
    total, agree = 0.0, 0
    n = len(labels)
    hd = h.detach().requires_grad_(grad)  # chunked output layer; one backward through the layers
    for a in range(0, n, 2048):
        logits = hd[a:a + 2048] @ w.T
        if short is not None:
            logits = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)
        logp = F.log_softmax(logits, dim=-1)
        ce = F.nll_loss(logp, labels[a:a + 2048], reduction="sum")
        pt = torch.softmax(topv[a:a + 2048], dim=-1)
        soft = -(pt * logp.gather(1, topi[a:a + 2048])).sum()
        part = (ce + soft_w * soft) / n
        if grad:
            part.backward()
        total += float(part.detach())
        hit = logits.argmax(-1) == labels[a:a + 2048]
        if short is not None:  # "some token outside the shortlist" is not a draft token
            hit &= labels[a:a + 2048] != short.other
        agree += int(hit.sum())
    if grad:
        h.backward(hd.grad)
    return total, n, agree


def evaluate(student, heldout: list[dict], pad: int, short: "Shortlist | None" = None) -> dict:
    student.eval()
    n = agree = 0
    with torch.no_grad():
        for i in range(0, len(heldout), 8):
            _, nn_, ag = loss_on(student, heldout[i:i + 8], pad, grad=False, short=short)
            n, agree = n + nn_, agree + ag
    student.train()
    a = agree / max(n, 1)
    return {"agreement": a, "positions": n,
            "tokens_per_round_K4": (1 - a ** 5) / (1 - a) if a < 1 else 5.0}


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=30.0, help="total wall-clock budget, minutes (default 30)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--gen-tokens", type=int, default=GEN_TOKENS, help="tokens per training continuation")
    ap.add_argument("--heldout-per-set", type=int, default=4)
    ap.add_argument("--force", action="store_true", help="redo everything (drops the cached data and draft)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = models.cache_root()
    out_dir = models.draft_dir(root)
    work = root / "distill-work"
    if args.force:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if (out_dir / "distill.json").exists():
        print(f"[distill] cached draft in {out_dir} (--force to redo)")
        print(json.dumps(json.loads((out_dir / "distill.json").read_text()), indent=1))
        return
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"gen_s": 0.0, "train_s": 0.0, "shards": 0}
    budget = args.budget_min * 60.0

    def save_state():
        state_path.write_text(json.dumps(state))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir = models.ensure_target()
    tok = AutoTokenizer.from_pretrained(str(target_dir))
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    pad = target.config.pad_token_id or 2
    print(f"[distill] target {target_dir}; budget {args.budget_min:.0f} min; work dir {work}", flush=True)

    # 1. data
    prompts = training_prompts(seed=1234)
    gen_budget = SHARES["data"] * budget
    while state["gen_s"] < gen_budget:
        t0 = time.perf_counter()
        i = state["shards"]
        chunk = prompts[(i * args.gen_batch) % len(prompts):][: args.gen_batch]
        enc = sorted((prompt_sets.encode(tok, p) for p in chunk), key=len)
        temp = 0.8 if i % 3 == 2 else 0.0
        data = teacher_generate(target, enc, args.gen_tokens, temp, pad, seed=i)
        torch.save(data, work / f"shard_{i:04d}.pt")
        state["shards"] = i + 1
        state["gen_s"] += time.perf_counter() - t0
        save_state()
        print(f"[distill] data shard {i} (T={temp}): {len(data) * args.gen_tokens} tokens in "
              f"{time.perf_counter() - t0:.0f}s; data time {state['gen_s'] / 60:.1f}/{gen_budget / 60:.1f} min",
              flush=True)

    # 1b. text shipped in installed packages, labelled by teacher forcing (6x faster than generating)
    text_budget = SHARES["text"] * budget
    state.setdefault("text_s", 0.0)
    state.setdefault("text_shards", 0)
    if state["text_s"] < text_budget:
        pending, skip = [], state["text_shards"] * 16
        for text in package_texts(seed=7):
            ids = tok(text)["input_ids"]
            for a in range(0, len(ids) - 256, 256):
                if skip:
                    skip -= 1
                    continue
                pending.append(ids[a:a + 256])
                if len(pending) < 16:
                    continue
                t0 = time.perf_counter()
                i = state["text_shards"]
                torch.save(teacher_label(target, pending), work / f"text_{i:04d}.pt")
                pending = []
                state["text_shards"] = i + 1
                state["text_s"] += time.perf_counter() - t0
                save_state()
                print(f"[distill] text shard {i}: {16 * 255} labelled tokens in {time.perf_counter() - t0:.0f}s; "
                      f"text time {state['text_s'] / 60:.1f}/{text_budget / 60:.1f} min", flush=True)
                if state["text_s"] >= text_budget:
                    break
            if state["text_s"] >= text_budget:
                break

    # 2. held-out: the benchmark's own prompts (never trained on), the target's greedy text
    ho_path = work / "heldout.pt"
    if not ho_path.exists():
        t0 = time.perf_counter()
        enc = [prompt_sets.encode(tok, p) for s in prompt_sets.SETS for p in prompt_sets.load_set(s)[:args.heldout_per_set]]
        heldout = []
        for a in range(0, len(enc), 16):
            heldout += teacher_generate(target, enc[a:a + 16], args.gen_tokens, 0.0, pad, seed=0)
        torch.save(heldout, ho_path)
        state["heldout_s"] = time.perf_counter() - t0
        save_state()
        print(f"[distill] held-out set: {len(heldout)} prompts in {state['heldout_s']:.0f}s", flush=True)
    heldout = torch.load(ho_path)

    # 3. training
    data = []
    for i in range(state["shards"]):
        data += torch.load(work / f"shard_{i:04d}.pt")
    n_gen = sum(len(d["gen"]) for d in data)
    for i in range(state.get("text_shards", 0)):
        data += torch.load(work / f"text_{i:04d}.pt")
    n_tokens = sum(len(d["gen"]) for d in data)
    ck_path = work / "ckpt.pt"
    student = make_student(target_dir, target)
    tc = target.config
    short = Shortlist(data, tc.vocab_size, [t for t in (tc.bos_token_id, tc.eos_token_id, pad) if t is not None])
    print(f"[distill] output shortlist: {len(short.ids)} of {tc.vocab_size} tokens", flush=True)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    step = 0
    if ck_path.exists():
        ck = torch.load(ck_path)
        student.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
    del target
    spent = state["gen_s"] + state.get("text_s", 0.0) + state.get("heldout_s", 0.0) + 30.0  # + loading
    train_budget = max(60.0, budget - spent - 90.0)  # 90 s: final evaluation and saving
    print(f"[distill] training on {len(data)} sequences, {n_tokens} labelled tokens ({n_gen} target-written); "
          f"{train_budget / 60:.1f} min (resumed at {state['train_s'] / 60:.1f})", flush=True)
    if state["train_s"] == 0.0:
        print(f"[distill] before training: {evaluate(student, heldout, pad, short)}", flush=True)
    rng = random.Random(step)
    last_ck = last_ev = time.perf_counter()
    seen = loss_acc = agree_acc = 0
    done = state["train_s"] >= train_budget
    while not done:
        for batch in batches(data, args.batch_tokens, rng):
            t0 = time.perf_counter()
            frac = min(1.0, state["train_s"] / train_budget)
            warm = min(1.0, (step + 1) / 30)
            lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss, n, agree = loss_on(student, batch, pad, short=short)
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            step += 1
            state["train_s"] += time.perf_counter() - t0
            seen, loss_acc, agree_acc = seen + n, loss_acc + loss * n, agree_acc + agree
            if step % 25 == 0:
                print(f"[distill] step {step} lr {lr:.2e} loss {loss_acc / seen:.3f} train agreement "
                      f"{agree_acc / seen:.3f}; {state['train_s'] / 60:.1f}/{train_budget / 60:.1f} min", flush=True)
                seen = loss_acc = agree_acc = 0
            if time.perf_counter() - last_ck > 60 or state["train_s"] >= train_budget:
                torch.save({"model": student.state_dict(), "opt": opt.state_dict(), "step": step}, ck_path)
                save_state()
                last_ck = time.perf_counter()
            if time.perf_counter() - last_ev > 180:
                print(f"[distill] held-out: {evaluate(student, heldout, pad, short)}", flush=True)
                last_ev = time.perf_counter()
            if state["train_s"] >= train_budget:
                done = True
                break

    # 4. report and save: the full-vocabulary draft as saved (rows outside the shortlist at 0)
    short.zero_the_rest(student)
    ev = evaluate(student, heldout, pad)
    from transformers import AutoConfig

    tcfg = AutoConfig.from_pretrained(str(target_dir))
    report = {
        "heldout_greedy_agreement": ev["agreement"], "heldout_positions": ev["positions"],
        "implied_tokens_per_round_K4": ev["tokens_per_round_K4"],
        "heldout": f"target greedy continuations ({args.gen_tokens} tokens) of the first {args.heldout_per_set} "
                   "prompts of each benchmark set (never trained on)",
        "train_sequences": len(data), "train_labelled_tokens": n_tokens, "target_written_tokens": n_gen,
        "steps": step, "output_shortlist": len(short.ids), "data_min": state["gen_s"] / 60, "text_min": state.get("text_s", 0.0) / 60, "train_min": state["train_s"] / 60, "budget_min": args.budget_min,
        "draft": {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "intermediate": INTER,
                  "params": sum(p.numel() for p in student.parameters())},
        "macs_per_token_draft": macs_per_token(student.config), "macs_per_token_target": macs_per_token(tcfg),
    }
    report["cost_ratio"] = report["macs_per_token_draft"] / report["macs_per_token_target"]
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "distill.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    print(json.dumps(report, indent=1))
    print(f"[distill] draft saved to {out_dir}")


if __name__ == "__main__":
    main()
