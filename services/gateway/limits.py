"""Hard limits on what one request may carry, checked before any expensive work (reading a huge
body, tokenizing megabytes of text): a request over one is refused with a message naming the
limit and the flag that sets it. One place for both fronts."""

from __future__ import annotations

from dataclasses import dataclass

from kvmesh.errors import InvalidArgument
from services.gateway.sampling import Sampling


@dataclass(frozen=True)
class InputLimits:
    max_messages: int
    max_prompt_chars: int
    max_stop_strings: int
    max_stop_chars: int
    max_stop_token_ids: int

    def check_messages(self, count: int) -> None:
        if count > self.max_messages:
            raise InvalidArgument(
                f"{count} messages; at most {self.max_messages} per request (--max-messages)", param="messages"
            )

    def check_prompt_chars(self, chars: int, param: str) -> None:
        if chars > self.max_prompt_chars:
            raise InvalidArgument(
                f"the prompt has {chars} characters; at most {self.max_prompt_chars} per request (--max-prompt-chars)",
                param=param,
            )

    def check_sampling(self, s: Sampling) -> None:
        if len(s.stop) > self.max_stop_strings:
            raise InvalidArgument(
                f"{len(s.stop)} stop strings; at most {self.max_stop_strings} (--max-stop-strings)", param="stop"
            )
        if (longest := max((len(x) for x in s.stop), default=0)) > self.max_stop_chars:
            raise InvalidArgument(
                f"a stop string of {longest} characters; at most {self.max_stop_chars} (--max-stop-chars)", param="stop"
            )
        if len(s.stop_token_ids) > self.max_stop_token_ids:
            raise InvalidArgument(
                f"{len(s.stop_token_ids)} stop_token_ids; at most {self.max_stop_token_ids} (--max-stop-token-ids)",
                param="stop_token_ids",
            )
