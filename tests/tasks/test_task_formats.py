"""Every registered task: synthetic rows in the dataset's real column schema → formatter → split
protocol → tokeniser (seq2seq and causal layouts) → metric, with hand-written expected values.

Each case gives two raw rows, their expected formatted source/target, and the metrics when the
model predicts row 0 right and answers row 1 with "zzz" (outside every label set).
"""

import datasets
import pytest
from pipeline_testutil import word_tokenizer

from pipeline.core.data import IGNORE_INDEX, TokenizeConfig, tokenize_dataset
from pipeline.core.tasks import get_task, list_tasks

MRQA_ROW = {
    "context_tokens": {"tokens": ["x"], "offsets": [0]}, "question_tokens": {"tokens": ["x"], "offsets": [0]},
    "detected_answers": {"text": ["x"], "char_spans": [{"start": [0], "end": [0]}], "token_spans": [{"start": [0], "end": [0]}]},
}


def mrqa_rows(subset):
    return [
        {**MRQA_ROW, "subset": subset, "qid": "q0", "context": "Paris is in France.", "question": "Where is Paris?", "answers": ["France", "in France"]},
        {**MRQA_ROW, "subset": subset, "qid": "q1", "context": "It was Ann's.", "question": "Whose was it?", "answers": ["Ann"]},
    ]


MRQA_SOURCES = ["question: Where is Paris ? context: Paris is in France .", "question: Whose was it ? context: It was Ann ' s ."]
MRQA_CASE = (MRQA_SOURCES, [["France", "in France"], ["Ann"]], {"squad_em": 50.0, "squad_f1": 50.0})
SCITAIL_PARSES = {"sentence1_binary_parse": "", "sentence1_parse": "", "sentence2_parse": "", "annotator_labels": []}

# name: (rows, expected sources, expected targets (str) or answer lists (generation), expected metrics)
CASES = {
    "mnli": (
        [{"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": 0, "idx": 0},
         {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2, "idx": 1}],
        ["premise: A cat sat. hypothesis: An animal sat.", "premise: It rains. hypothesis: It is dry."], ["0", "2"], {"accuracy": 50.0},
    ),
    "qqp": (
        [{"question1": "How old?", "question2": "What age?", "label": 1, "idx": 0},
         {"question1": "Why?", "question2": "Where?", "label": 0, "idx": 1}],
        ["question1: How old? question2: What age?", "question1: Why? question2: Where?"], ["1", "0"],
        {"accuracy": 50.0, "f1": 200 / 3},  # "zzz" → wrong class 1: TP 1, FP 1
    ),
    "qnli": (
        [{"question": "Who?", "sentence": "Ann did.", "label": 0, "idx": 0}, {"question": "When?", "sentence": "Blue.", "label": 1, "idx": 1}],
        ["question: Who? sentence: Ann did.", "question: When? sentence: Blue."], ["0", "1"], {"accuracy": 50.0},
    ),
    "sst2": (
        [{"sentence": "great film", "label": 1, "idx": 0}, {"sentence": "dull plot", "label": 0, "idx": 1}],
        ["sentence: great film", "sentence: dull plot"], ["1", "0"], {"accuracy": 50.0},
    ),
    "stsb": (
        [{"sentence1": "A man sings.", "sentence2": "A man is singing.", "label": 3.1, "idx": 0},
         {"sentence1": "A dog.", "sentence2": "The sea.", "label": 0.5, "idx": 1}],
        ["sentence1: A man sings. sentence2: A man is singing.", "sentence1: A dog. sentence2: The sea."],
        ["3.2", "0.4"],  # nearest 0.2, half to even: 3.1·5 = 15.5 → 16; 0.5·5 = 2.5 → 2
        {"pearson": 100.0, "spearman": 100.0},  # two points ("zzz" → -1.0) are perfectly correlated
    ),
    "mrpc": (
        [{"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 0},
         {"sentence1": "He left.", "sentence2": "She came.", "label": 0, "idx": 1}],
        ["sentence1: He left. sentence2: He went away.", "sentence1: He left. sentence2: She came."], ["1", "0"],
        {"accuracy": 50.0, "f1": 200 / 3},
    ),
    "rte": (
        [{"sentence1": "Ann won.", "sentence2": "Ann played.", "label": 0, "idx": 0},
         {"sentence1": "Ann won.", "sentence2": "Ann lost.", "label": 1, "idx": 1}],
        ["sentence1: Ann won. sentence2: Ann played.", "sentence1: Ann won. sentence2: Ann lost."], ["0", "1"], {"accuracy": 50.0},
    ),
    "cola": (
        [{"sentence": "The cat sat.", "label": 1, "idx": 0}, {"sentence": "Cat the sat.", "label": 0, "idx": 1}],
        ["sentence: The cat sat.", "sentence: Cat the sat."], ["1", "0"],
        {"mcc": 0.0},  # predictions 1, 1 (invalid → wrong class) against 1, 0: undefined → 0
    ),
    "multirc": (
        [{"paragraph": "<b>Sent 1: </b>Ann ran.<br>", "question": "Who ran?", "answer": "Ann", "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1},
         {"paragraph": "<b>Sent 1: </b>Ann ran.<br>", "question": "Who ran?", "answer": "Bob", "idx": {"paragraph": 0, "question": 0, "answer": 1}, "label": 0}],
        ["question: Who ran? answer: Ann paragraph: Sent 1: Ann ran. ", "question: Who ran? answer: Bob paragraph: Sent 1: Ann ran. "],
        ["1", "0"], {"f1": 200 / 3, "multirc_em": 0.0},  # one question, one of its answers wrong
    ),
    "boolq": (
        [{"question": "is it red", "passage": "It is red.", "idx": 0, "label": 1}, {"question": "is it big", "passage": "It is small.", "idx": 1, "label": 0}],
        ["question: is it red passage: It is red.", "question: is it big passage: It is small."], ["1", "0"], {"accuracy": 50.0},
    ),
    "wic": (
        [{"word": "bank", "sentence1": "The river bank.", "sentence2": "The bank loan.", "start1": 10, "start2": 4, "end1": 14, "end2": 8, "idx": 0, "label": 0},
         {"word": "run", "sentence1": "I run.", "sentence2": "You run.", "start1": 2, "start2": 4, "end1": 5, "end2": 7, "idx": 1, "label": 1}],
        ["sentence1: The river bank. sentence2: The bank loan. word: bank", "sentence1: I run. sentence2: You run. word: run"], ["0", "1"], {"accuracy": 50.0},
    ),
    "wsc": (
        [{"text": "This is a test sentence .", "span1_index": 3, "span2_index": 0, "span1_text": "test", "span2_text": "This", "idx": 0, "label": 0},
         {"text": "Mark told Pete he was late .", "span1_index": 2, "span2_index": 3, "span1_text": "Pete", "span2_text": "he", "idx": 1, "label": 1}],
        ["text: # This # is a * test * sentence .", "text: Mark told * Pete * # he # was late ."], ["0", "1"], {"accuracy": 50.0},
    ),
    "cb": (
        [{"premise": "It may rain.", "hypothesis": "It rains.", "idx": 0, "label": 2}, {"premise": "It is dry.", "hypothesis": "It rains.", "idx": 1, "label": 1}],
        ["premise: It may rain. hypothesis: It rains.", "premise: It is dry. hypothesis: It rains."], ["2", "1"],
        {"macro_f1": 100 / 3, "accuracy": 50.0},  # F1 per class: 0 (absent) 0 (missed) 1 (right)
    ),
    "record": (
        [{"passage": "The cat sat on the mat.\n@highlight\nCats like mats", "query": "@placeholder sat on the mat.", "entities": ["cat", "mat"],
          "entity_spans": {"text": ["cat", "mat"], "start": [4, 19], "end": [7, 22]}, "answers": ["cat"], "idx": {"passage": 0, "query": 0}},
         {"passage": "Bob met Ann\n@highlight\nAnn smiled", "query": "Bob met @placeholder", "entities": ["Bob", "Ann"],
          "entity_spans": {"text": ["Bob", "Ann"], "start": [0, 8], "end": [3, 11]}, "answers": ["Ann", "Ann."], "idx": {"passage": 1, "query": 1}}],
        ["record query: @placeholder sat on the mat. entities: cat, mat passage: The cat sat on the mat. Cats like mats",
         "record query: Bob met @placeholder entities: Bob, Ann passage: Bob met Ann. Ann smiled"],
        [["cat"], ["Ann", "Ann."]], {"squad_em": 50.0, "squad_f1": 50.0},
    ),
    "nq": (mrqa_rows("NaturalQuestionsShort"), *MRQA_CASE),
    "hotpotqa": (mrqa_rows("HotpotQA"), *MRQA_CASE),
    "searchqa": (mrqa_rows("SearchQA"), *MRQA_CASE),
    "newsqa": (mrqa_rows("NewsQA"), *MRQA_CASE),
    "winogrande": (
        [{"sentence": "Sam thanked Tom because _ helped.", "option1": "Sam", "option2": "Tom", "answer": "2"},
         {"sentence": "Sam paid Tom because _ owed money.", "option1": "Sam", "option2": "Tom", "answer": "1"}],
        ["sentence: Sam thanked Tom because _ helped. option0: Sam option1: Tom", "sentence: Sam paid Tom because _ owed money. option0: Sam option1: Tom"],
        ["1", "0"], {"accuracy": 50.0},
    ),
    "yelp": (
        [{"text": "Tasty food.", "label": 1}, {"text": "Cold soup.", "label": 0}], ["sentence: Tasty food.", "sentence: Cold soup."], ["1", "0"], {"accuracy": 50.0},
    ),
    "scitail": (
        [{**SCITAIL_PARSES, "sentence1": "Ice melts.", "sentence2": "Ice can melt.", "gold_label": "entailment"},
         {**SCITAIL_PARSES, "sentence1": "Ice melts.", "sentence2": "Rocks fly.", "gold_label": "neutral"}],
        ["premise: Ice melts. hypothesis: Ice can melt.", "premise: Ice melts. hypothesis: Rocks fly."], ["0", "1"], {"accuracy": 50.0},
    ),
    "paws": (
        [{"id": 1, "sentence1": "A b c.", "sentence2": "A c b.", "label": 0}, {"id": 2, "sentence1": "A b.", "sentence2": "A b.", "label": 1}],
        ["sentence1: A b c. sentence2: A c b.", "sentence1: A b. sentence2: A b."], ["0", "1"], {"accuracy": 50.0},
    ),
    "mbpp": (
        [{"task_id": 1, "text": "Add two numbers.", "code": "def add(a, b):\n    return a + b", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
          "test_setup_code": "", "challenge_test_list": []},
         {"task_id": 2, "text": "Negate x.", "code": "def neg(x):\n    return -x", "test_list": ["assert neg(1) == -1"], "test_setup_code": "", "challenge_test_list": []}],
        ["text: Add two numbers. tests: assert add(1, 2) == 3 assert add(0, 0) == 0", "text: Negate x. tests: assert neg(1) == -1"],
        [["def add(a, b):\n    return a + b"], ["def neg(x):\n    return -x"]], {"exact_match": 50.0},
    ),
    "movie-sentiment": (
        [{"id": "1", "rating": 2.5, "text": "A joy to watch.", "label": 1}, {"id": "2", "rating": -1.2, "text": "Too long.", "label": 0}],
        ["sentence: A joy to watch.", "sentence: Too long."], ["positive", "negative"], {"accuracy": 50.0, "f1": 200 / 3},
    ),
}


def test_every_registered_task_has_a_case():
    assert sorted(CASES) == sorted(list_tasks())
    assert len(list_tasks()) == 24  # the paper's 23 + movie-sentiment


def raw_splits(task, rows):
    """Three copies of the rows under every official split name the task's protocol reads."""
    spec = task.splits
    names = {"official": [spec.train, spec.validation, spec.test], "small": [spec.train, spec.validation],
             "large": [spec.train, spec.validation], "holdout": [spec.train]}[spec.protocol]
    extra = [{**rows[0], "subset": "SQuAD"}] if "subset" in rows[0] else []  # filtered out by MRQA tasks
    return {name: datasets.Dataset.from_list(rows * 3 + extra) for name in names}


@pytest.mark.parametrize("name", sorted(CASES))
def test_format_split_tokenize_and_score(name):
    rows, sources, targets, expected_metrics = CASES[name]
    task = get_task(name)
    golds = [t if isinstance(t, list) else [t] for t in targets]
    # 1. formatter
    for row, source, gold in zip(rows, sources, golds, strict=True):
        assert task.format_row(row) == [{"source": source, "target": gold[0], "answers": gold, "group": task.format_row(row)[0]["group"]}]
    # 2. split protocol on 6 rows (large: 2 validation rows instead of 1,000)
    if task.splits.protocol == "large":
        task = task.with_splits(validation_size=2)
    splits = task.get_splits(raw_splits(task, rows))
    expected_sizes = {"official": (6, 6), "small": (3, 3), "large": (2, 6), "holdout": (1, 1)}[task.splits.protocol]
    assert (len(splits["validation"]), len(splits["test"])) == expected_sizes
    assert set(splits["train"]["source"]) == set(sources)
    # 3. tokeniser: ids decode back to the formatted text; causal loss only on the target
    val = splits["validation"]
    for layout, backbone in (("t5", "seq2seq"), ("llama", "causal")):
        tok = word_tokenizer(sources + [g for gs in golds for g in gs] + ["=>"], layout)
        cfg = TokenizeConfig(backbone=backbone, max_source_length=64, max_target_length=32, separator="=>")
        encoded, report = tokenize_dataset(val, tok, cfg, "validation")
        assert report.source_truncated == report.target_truncated == 0
        for ex in encoded:
            label_ids = [i for i in ex["labels"] if i != IGNORE_INDEX]
            assert tok.decode(label_ids, skip_special_tokens=True) == " ".join(ex["target"].split())
            prompt = ex["input_ids"][: len(ex["input_ids"]) - len(label_ids)] if backbone == "causal" else ex["input_ids"]
            expected_prompt = " ".join(ex["source"].split()) + (" =>" if backbone == "causal" else "")
            assert tok.decode(prompt, skip_special_tokens=True) == expected_prompt
            assert ex["input_ids"][0 if backbone == "causal" else -1] == (3 if backbone == "causal" else 1)  # <s> / </s>
    # 4. metrics: row 0 right, row 1 "zzz"
    formatted = [task.format_row(r)[0] for r in rows]
    refs = [f["answers"] if task.task_type == "generation" else f["target"] for f in formatted]
    groups = [f["group"] for f in formatted]
    out = task.compute_metrics([formatted[0]["target"], "zzz"], refs, groups)
    assert out == pytest.approx(expected_metrics)
    assert task.primary_metric == list(expected_metrics)[0]
    # perfect predictions score 100 on the selection metric, except CB: its class 0 is absent from
    # these two rows and macro-F1 over labels 0..2 counts it as F1 0 (as the reference's sklearn call)
    perfect = task.compute_metrics([f["target"] for f in formatted], refs, groups)[task.primary_metric]
    assert perfect == pytest.approx(200 / 3 if name == "cb" else 100.0)
