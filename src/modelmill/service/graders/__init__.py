"""Graders on the service side: requests.py serves graders/run and graders/validate and builds the context
ml.graders grades with, judge.py answers score_model / label_model prompts."""
