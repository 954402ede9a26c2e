"""Re-runs on recovery (E3), pure: what two answers to one request differ in (`diff`: the text
as a unified diff, and the finish reason, tool calls and token counts side by side), a kept
answer's lifecycle (`ReviewState`, a transition table: pending → rerunning → done, rerunning →
pending on a failed re-run or a lapsed lease), what a re-run's answer means (`rerun_verdict`)
and its backoff. Storing and re-running is `runtime/review.py`'s and `runtime/reviewer.py`'s.
May import: core, translate.
"""

from .diff import Answer, AnswerDiff, Change, diff_answers, read_answer
from .lifecycle import TRANSITIONS, IllegalReviewTransition, ReviewState, Verdict, rerun_delay, rerun_verdict

__all__ = [
    "TRANSITIONS",
    "Answer",
    "AnswerDiff",
    "Change",
    "IllegalReviewTransition",
    "ReviewState",
    "Verdict",
    "diff_answers",
    "read_answer",
    "rerun_delay",
    "rerun_verdict",
]
