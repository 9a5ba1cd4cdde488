"""The RFT arithmetic example's grader: the reply's final answer, scored by reasoning-gym's own
`score_answer` for basic_arithmetic, as a python grader.

The final answer is what ModelMill hands the grader as `output_text` when the reply has an
"Answer:" line (the text after it). When it has none, it is the last number in the reply:
the reasoning comes first and the result last ("-4 - 5 = -9"), which is how SmolLM2-135M-Instruct
answers whatever it is asked. reasoning-gym scores an *extracted* answer (its `extract_answer`
reads `<answer>` tags, which this model never writes); scoring the whole reply instead, as the
first version of this example did, gave a right reply like "5 * -9 = -45" 0.25 and a right
reply of 55 tokens almost nothing, so the reward measured length, not arithmetic.

The final answer gets score_answer's score: 1.0 when it is the answer; when it only contains the
answer's text, len(answer) / len(final answer), as reasoning-gym scores ("-45" for 45 gets 2/3,
"14" for 4 gets 1/2); otherwise, or with no number at all, 0. The sandbox offers a fixed package
list without reasoning-gym, so score_answer's ten lines are copied;
build_data.check_grader proves the copy scores extracted answers exactly like the library.
"""

GRADER_SOURCE = '''\
import re


def score_answer(answer, oracle_answer):
    # reasoning_gym.dataset.ProceduralDataset.score_answer (reasoning-gym 0.1.25, Apache-2.0)
    reward = 0.0
    if isinstance(answer, str) and len(answer) > 0:
        if answer == oracle_answer:
            reward = 1.0
        elif oracle_answer in answer:
            reward = len(oracle_answer) / len(answer)
    return reward


def final_answer(text):
    # The last number of the reply ("-4 - 5 = -9" -> "-9"); a minus sign counts only when it
    # is not a subtraction ("9-4" -> "4"). None when the reply has no number.
    numbers = re.findall(r"(?<![\\w)])-?\\d+(?:\\.\\d+)?|\\d+(?:\\.\\d+)?", text)
    return numbers[-1] if numbers else None


def grade(sample, item):
    text = sample["output_text"].strip()
    answer = text if text == item["answer"] else final_answer(text)
    return score_answer(answer, item["answer"]) if answer is not None else 0.0
'''

GRADER = {"type": "python", "name": "basic_arithmetic", "source": GRADER_SOURCE}
