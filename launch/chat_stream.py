"""One chat request through the OpenAI API, streamed as it is generated, with its exact token ids.

The demo shows text arriving through the client a user would use (`openai`, /v1/chat/completions,
stream=True) and checks exactness on token ids, not text: SGLang's `return_input_ids_in_sglext` /
`return_output_ids_in_sglext` add the prompt's and the completion's token ids to the stream's last
chunk, so the streamed request itself is the one compared, and nothing is generated twice.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class ChatResult:
    text: str = ""
    input_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0  # the whole request
    ttft: float | None = None  # until the first generated text arrived

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first over the time after the first (prefill excluded)."""
        n, t = len(self.output_ids) - 1, self.seconds - (self.ttft or 0.0)
        return n / t if n > 0 and t > 0 else None


def _sglext(chunk) -> dict:
    ext = getattr(chunk, "sglext", None) or (chunk.model_extra or {}).get("sglext")
    return ext if isinstance(ext, dict) else (ext.model_dump() if ext is not None else {})


def stream_chat(base_url: str, prompt: str, max_tokens: int, echo: bool = True, out=sys.stdout) -> ChatResult:
    """Greedy chat completion of `prompt`; with echo, its text goes to `out` as it streams in."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none")
    res, t0 = ChatResult(), time.perf_counter()
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, extra_body={"return_input_ids_in_sglext": True, "return_output_ids_in_sglext": True})
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content or ""
            if piece and res.ttft is None:
                res.ttft = time.perf_counter() - t0
            res.text += piece
            if echo and piece:
                out.write(piece)
                out.flush()
        ext = _sglext(chunk)
        if ext.get("input_ids"):
            res.input_ids = list(ext["input_ids"])
        if ext.get("output_ids"):
            res.output_ids = list(ext["output_ids"][0])
    res.seconds = time.perf_counter() - t0
    if not res.output_ids:
        raise RuntimeError("the stream carried no token ids (SGLang's return_output_ids_in_sglext): cannot "
                           "check exactness")
    if echo:
        out.write("\n")
    return res
