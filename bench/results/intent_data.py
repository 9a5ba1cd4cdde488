"""The intent story's banking dataset: 12 intents, generated here from templates and slot values
(nothing is downloaded; the same seed gives the same lines).

The split is by TEMPLATE, not by slot value: TRAIN_TEMPLATES and TEST_TEMPLATES are two separate
lists, and every test template is a sentence shape the training set never uses: slang, typos,
fragments, long rambling messages, other verbs and word orders. tests/bench/test_intent_data.py
asserts that no test template's skeleton (the template with its slots and punctuation removed,
lowercased) equals a training template's, and that no generated test message appears in training.
Test slot values are also drawn from their own lists (TEST_SLOTS), so neither the sentence nor the
names/amounts in it were trained on.
"""

from __future__ import annotations

import random
import re
import string

INTENTS = ("check_balance", "transfer_money", "lost_card", "report_fraud", "pay_bill", "change_pin",
           "find_atm", "apply_loan", "exchange_rate", "close_account", "update_address", "activate_card")

SYSTEM_PROMPT = ("You classify a bank customer's message. Reply with exactly one intent label and nothing else. "
                 "Labels: " + ", ".join(INTENTS) + ".")

TRAIN_SLOTS = {
    "account": ["checking", "savings", "current", "joint"],
    "amount": ["$50", "$120", "$300", "$1,000", "$75", "$2,500"],
    "person": ["my mother", "John", "my landlord", "Sarah", "my brother", "Alex"],
    "biller": ["electricity", "water", "phone", "internet", "gas"],
    "place": ["downtown", "at the airport", "on Main Street", "in the mall"],
    "currency": ["euros", "pounds", "yen", "Canadian dollars"],
    "loan": ["car", "home", "personal", "student"],
    "city": ["Boston", "Denver", "Seattle", "Austin"],
    "card": ["debit card", "credit card", "Visa card", "bank card"],
}
TEST_SLOTS = {
    "account": ["chequing", "rainy day fund", "business", "kids savings"],
    "amount": ["40 bucks", "$800", "two grand", "$15"],
    "person": ["my roommate", "Priya", "dad", "my buddy Mike"],
    "biller": ["cable", "credit card", "trash pickup", "mobile"],
    "place": ["near the train station", "by my office", "on 5th ave", "around here"],
    "currency": ["pesos", "swiss francs", "aussie dollars", "rupees"],
    "loan": ["mortgage", "small business", "boat", "renovation"],
    "city": ["Chicago", "Miami", "Portland", "Dallas"],
    "card": ["mastercard", "amex", "cash card", "plastic"],
}
# Training messages are sometimes wrapped in a greeting or a thank-you (training only), for variety.
TRAIN_WRAPPERS = ["{}", "{}", "Hello, {}", "Hi. {}", "{} Thank you.", "Good morning. {}"]

# Polite, complete sentences: half of how the training set asks.
POLITE_TEMPLATES = {
    "check_balance": ["What is the balance of my {account} account?", "I would like to check my account balance.",
                      "Can you tell me how much money is in my {account} account?",
                      "Please show me my current balance.", "How much do I have available to spend?",
                      "I need to know my {account} balance."],
    "transfer_money": ["I want to transfer {amount} to {person}.", "Please send {amount} to {person}.",
                       "Can you move {amount} from my {account} account to my other account?",
                       "How do I transfer money to {person}?", "I need to wire {amount} to {person}.",
                       "Transfer {amount} from {account} to {person}, please."],
    "lost_card": ["I lost my {card}.", "My {card} is missing and I cannot find it.",
                  "I think I left my credit card somewhere in {city}.", "I have lost my {card}, what should I do?",
                  "My wallet with my {card} was stolen.", "Please block my {card}, I misplaced it."],
    "report_fraud": ["There is a transaction of {amount} on my account that I did not make.",
                     "I want to report a fraudulent charge.", "Someone used my card without permission.",
                     "I see a payment to an unknown merchant in {city}.",
                     "I think my account has been hacked.", "I did not authorize a charge of {amount}."],
    "pay_bill": ["I want to pay my {biller} bill.", "Please pay {amount} for my {biller} bill.",
                 "How can I pay a bill online?", "Can you set up a payment for my {biller} bill?",
                 "I need to pay my {biller} company.", "Pay the {biller} bill from my {account} account."],
    "change_pin": ["I want to change the PIN of my {card}.", "How do I reset my {card} PIN?",
                   "Please help me update my PIN number.", "I forgot my PIN and need a new one for my {card}.",
                   "Can I set a new PIN for my {card}?", "I would like to choose a different PIN."],
    "find_atm": ["Where is the nearest ATM?", "Is there an ATM {place}?", "Can you find a cash machine near me?",
                 "I need an ATM in {city}.", "Show me ATMs {place}.", "Where can I withdraw cash nearby?"],
    "apply_loan": ["I want to apply for a {loan} loan.", "How do I get a {loan} loan?",
                   "Can I borrow {amount} from the bank?", "I would like information about {loan} loans.",
                   "What do I need to apply for a loan?", "Please start a {loan} loan application for me."],
    "exchange_rate": ["What is the exchange rate for {currency}?", "How many {currency} can I get for {amount}?",
                      "Can you tell me today's rate for {currency}?", "I want to know the current exchange rate.",
                      "What is the conversion rate from dollars to {currency}?",
                      "How much is {amount} in {currency}?"],
    "close_account": ["I want to close my {account} account.", "Please close my account.",
                      "How do I cancel my bank account?", "I would like to shut down my {account} account.",
                      "Can you help me close my account with you?", "I no longer need my {account} account, close it."],
    "update_address": ["I want to update my address.", "I moved to {city} and need to change my address.",
                       "Please change the mailing address on my account.", "How do I update my home address?",
                       "My address has changed, can you update it?", "I need to change my address to a new one in {city}."],
    "activate_card": ["I want to activate my new {card}.", "How do I activate my {card}?",
                      "Please activate the {card} I received.", "My new {card} arrived, can you activate it?",
                      "I need to activate my replacement {card}.", "I would like to start using my new {card}."],
}

# Short, casual and misspelled messages: the other half, as real customers write. Written apart from
# the test set: tests/bench/test_intent_data.py checks that none shares a skeleton, or any three words in
# a row, with a test template, so the test's slang, typos and fragments stay unseen.
CASUAL_TEMPLATES = {
    "check_balance": ["whats my balance", "quick q, how much is sitting in my {account}?", "show balance",
                      "check ballance on {account} please", "is there still cash in my {account}",
                      "hey, need to see what my {account} has in it"],
    "transfer_money": ["send money to {person}", "can u move {amount} to {person}", "transfer to {person} thx",
                       "wire {amount} to {person} today", "pay {person} back {amount}",
                       "i owe {person} {amount}, send it from {account}"],
    "lost_card": ["my card is lost", "help i lost my {card}", "misplaced my {card} somewhere", "lost card",
                  "where did my {card} go, i lost it", "dropped my {card} somewhere in {city}"],
    "report_fraud": ["theres a charge i dont recognize", "fraud on my {card}",
                     "someone stole my card number and bought stuff", "unauthorized payment of {amount}",
                     "i got charged {amount} for something i didnt order", "report fraud"],
    "pay_bill": ["pay {biller}", "pay my {biller} bill now", "i wanna pay the {biller}", "{biller} bill payment please",
                 "take {amount} out of {account} for the {biller} bill", "can i pay {biller} through the app"],
    "change_pin": ["change my pin", "reset pin", "i want a new pin for my {card}", "how can i change my pin number",
                   "pin change for {card}", "update the pin on my {card} please"],
    "find_atm": ["find me an atm", "atms in {city}?", "where do i get cash {place}", "any cash machines in {city}",
                 "i need to withdraw money, which atm is close", "atm locations {place}"],
    "apply_loan": ["i need a loan", "loan for a {loan}?", "apply for loan", "i want to borrow {amount}",
                   "{loan} loan rates and how to apply", "get me a {loan} loan"],
    "exchange_rate": ["{currency} exchange rate", "convert {amount} to {currency}", "usd to {currency}?",
                      "exchange rate for {currency}", "how much {currency} for {amount}", "currency rates"],
    "close_account": ["close my account", "i wanna close {account}", "shut my {account} account",
                      "delete my bank account", "delete my {account} account", "i want out, close everything"],
    "update_address": ["change my address", "update address to {city}", "moved to {city}", "new address",
                       "i have a new address in {city}", "my mailing address is wrong, correct it"],
    "activate_card": ["activate my card", "activate {card}", "please turn on my new {card}", "card activation",
                      "set up my new {card} so i can use it", "how to start using the {card}"],
}
# Every training template, polite and casual alternating (build cycles through them in this order).
TRAIN_TEMPLATES = {intent: [t for pair in zip(POLITE_TEMPLATES[intent], CASUAL_TEMPLATES[intent]) for t in pair]
                   for intent in POLITE_TEMPLATES}

# Shapes the training set never uses: slang, typos, fragments, long stories, other verbs and orders.
TEST_TEMPLATES = {
    "check_balance": ["yo hows my {account} acct lookin", "balanse pls",
                      "before i go shopping tonight i wanna know exactly whats left in there, can u check",
                      "money left??", "got enough in {account} to cover rent or nah"],
    "transfer_money": ["send {person} {amount} asap", "need to get {amount} over to {person} for dinner last night",
                       "shift {amount} into {account} real quick", "trasnfer {amount} 2 {person}",
                       "{person} is waiting on {amount} from me, make it happen"],
    "lost_card": ["cant find my card anywhere omg", "pretty sure my card fell out of my pocket on the bus",
                  "card gone. help", "i had it yesterday and now the card just isnt in my wallet anymore, freeze it",
                  "lsot my visa"],
    "report_fraud": ["wtf is this {amount} charge i never bought anything",
                     "somebody is spending my money, i didnt buy stuff in {city}",
                     "sus transactions on my statement", "got a text about a purchase i never made, pretty sure im being scammed",
                     "fraudulant activity on my acount"],
    "pay_bill": ["{biller} is due tmrw, take care of it", "settle my {biller} invoice",
                 "gotta knock out the {biller} payment before the late fee hits", "bil payment for {biller}",
                 "put {amount} toward {biller}"],
    "change_pin": ["new pin plz", "my pin is too easy to guess, want something else",
                   "chnage pin", "swap out the 4 digit code on my card", "can the secret number for my card be different"],
    "find_atm": ["cash machine {place}?", "need cash, wheres the closest atm",
                 "any atms {place} that dont charge fees", "atm nearby", "where can i pull out some money {place}"],
    "apply_loan": ["thinking about a {loan}, can u guys lend me money", "need {amount} to get by till payday, do you do loans",
                   "lone application", "what would it take to borrow for a {loan}", "can i qualify for financing on a {loan}"],
    "exchange_rate": ["{currency} rate today?", "how far does a dollar go in {currency} rn",
                      "going abroad, whats the conversion to {currency}", "exchnage rate pls",
                      "if i swap {amount} what do i end up with in {currency}"],
    "close_account": ["done with this bank, shut it all down", "get rid of my {account} account",
                      "cancle my acount", "im switching banks so terminate my {account} account",
                      "dont want the {account} account anymore"],
    "update_address": ["new place in {city}, fix my info", "adress change",
                       "just moved, statements should go to my new apartment",
                       "pls put my new street address on file", "relocated to {city}, update records"],
    "activate_card": ["card came in the mail, how do i turn it on", "activte card",
                      "new card wont work til i enable it right", "got my replacement visa, get it working",
                      "enable the card that just arrived"],
}

_SLOT = re.compile(r"\{(\w+)\}")


def skeleton(template: str) -> str:
    """A template's shape: slots, punctuation and case removed, whitespace collapsed."""
    text = _SLOT.sub(" ", template).lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def fill(template: str, slots: dict, rng: random.Random) -> str:
    return _SLOT.sub(lambda m: rng.choice(slots[m.group(1)]), template)


_WORD = re.compile(r"[A-Za-z]+")


def _words(texts) -> set[str]:
    return {w.lower() for text in texts for w in _WORD.findall(_SLOT.sub(" ", text))}


# Every word of the held-out messages that training does not also use: a misspelling made for training
# must never be one of these, so the test's own misspellings ("balanse", "lsot", "lone") stay unseen.
TEST_ONLY_WORDS = (_words(t for ts in TEST_TEMPLATES.values() for t in ts) | _words(v for vs in TEST_SLOTS.values() for v in vs)) \
    - _words([*(t for ts in TRAIN_TEMPLATES.values() for t in ts), *(v for vs in TRAIN_SLOTS.values() for v in vs),
              *TRAIN_WRAPPERS])


def misspell(message: str, rng: random.Random) -> str:
    """The message with one word of four or more letters misspelled by one random edit: two neighbouring
    letters swapped, a letter dropped, a letter doubled, or a vowel replaced by another. Edits that
    make a word of the test set (TEST_ONLY_WORDS) are refused and redrawn. Written here rather than
    taken from an augmentation library (nlpaug pulls in pandas and gdown) because it is four edits
    and must refuse the test vocabulary."""
    spans = [m.span() for m in _WORD.finditer(message) if len(m.group()) >= 4]
    for _ in range(50 if spans else 0):
        start, end = rng.choice(spans)
        word = message[start:end]
        i = rng.randrange(1, len(word) - 1)  # keep the first letter, as most real typos do
        op = rng.choice(("swap", "drop", "double", "vowel"))
        if op == "swap":
            typo = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif op == "drop":
            typo = word[:i] + word[i + 1:]
        elif op == "double":
            typo = word[:i] + word[i] + word[i:]
        else:
            vowels = [j for j, c in enumerate(word) if c in "aeiou" and j > 0]
            if not vowels:
                continue
            j = rng.choice(vowels)
            typo = word[:j] + rng.choice([v for v in "aeiou" if v != word[j]]) + word[j + 1:]
        if typo != word and typo.lower() not in TEST_ONLY_WORDS:
            return message[:start] + typo + message[end:]
    return message


def line(message: str, intent: str) -> dict:
    """One chat-format training line."""
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": message},
                         {"role": "assistant", "content": intent}]}


def build(train_per_intent: int, test_per_intent: int | None, seed: int,
          intents: tuple[str, ...] = INTENTS, casual: bool = True,
          typo_share: float = 0.0, misspelled: set[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(training chat lines, test probes {"id", "intent", "template", "message"}). Training cycles
    each intent's templates with training slot values until it has train_per_intent distinct
    messages; the test set fills each test template once (the first test_per_intent of them;
    None: all) with test slot values. casual=False: the polite templates only (the story's data
    until 2026-12-03, for comparison). typo_share: that share of the training messages, drawn at
    random, get one misspelled word (misspell); same count of lines, and 0 gives exactly the data
    of before (the typos draw from their own random stream). misspelled, when given, receives the
    training messages that got a misspelling."""
    rng = random.Random(seed)
    typo_rng = random.Random(seed + 1)
    train = []
    for intent in intents:
        seen: set[str] = set()
        templates = TRAIN_TEMPLATES[intent] if casual else POLITE_TEMPLATES[intent]
        for attempt in range(train_per_intent * 50):  # enough tries to find distinct fills
            if len(seen) == train_per_intent:
                break
            wrapper, body = rng.choice(TRAIN_WRAPPERS), fill(templates[attempt % len(templates)], TRAIN_SLOTS, rng)
            typo = bool(typo_share) and typo_rng.random() < typo_share
            if typo:
                body = misspell(body, typo_rng)  # the request, not its greeting
            message = wrapper.format(body)
            if message not in seen:
                seen.add(message)
                if typo and misspelled is not None:
                    misspelled.add(message)
                train.append(line(message, intent))
    rng.shuffle(train)
    test = []
    for intent in intents:
        for i, template in enumerate(TEST_TEMPLATES[intent][:test_per_intent]):
            test.append({"id": f"{intent}_{i}", "intent": intent, "template": template,
                         "message": fill(template, TEST_SLOTS, rng)})
    return train, test
