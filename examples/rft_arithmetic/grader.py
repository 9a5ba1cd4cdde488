"""The RFT arithmetic example's grader: reasoning-gym's `score_answer` for basic_arithmetic, as a
python grader (the sandbox offers a fixed package list, without reasoning-gym, so the ten lines
are copied; build_data.check_grader proves the copy scores exactly like the library).

Exact answer: 1.0. An answer that contains the right number among other text: the share of the
text that the number is (so "It is 7." scores 1/8). Anything else: 0.
"""

GRADER_SOURCE = '''\
def grade(sample, item):
    # reasoning_gym.dataset.ProceduralDataset.score_answer (reasoning-gym 0.1.25, Apache-2.0)
    answer = sample["output_text"]
    oracle_answer = item["answer"]
    reward = 0.0
    if isinstance(answer, str) and len(answer) > 0:
        if answer == oracle_answer:
            reward = 1.0
        elif oracle_answer in answer:
            reward = len(oracle_answer) / len(answer)
    return reward
'''

GRADER = {"type": "python", "name": "basic_arithmetic", "source": GRADER_SOURCE}
