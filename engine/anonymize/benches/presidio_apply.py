# The anonymization bench's records through Presidio's anonymizer: the same
# treatments, field by field, as meshgov's plan. Reads NDJSON from argv[1];
# prints CPU seconds per pass (median of argv[2] passes) and the first
# record's output.
import json
import sys
import time

from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

engine = AnonymizerEngine()
SALT = "meshgov-bench-salt-0123456789"


def whole(entity, value):
    return [RecognizerResult(entity_type=entity, start=0, end=len(value), score=1.0)]


# (field, entity, the span of the value treated, operator)
RULES = [
    ("user_id", "ID", lambda v: whole("ID", v), OperatorConfig("hash", {"hash_type": "sha256", "salt": SALT})),
    # Keep the first character and the last four, as meshgov's mask.
    ("email", "EMAIL_ADDRESS",
     lambda v: [RecognizerResult(entity_type="EMAIL_ADDRESS", start=1, end=max(1, len(v) - 4), score=1.0)],
     None),
    ("name", "PERSON", lambda v: whole("PERSON", v), OperatorConfig("redact", {})),
    ("birth_date", "DATE_TIME", lambda v: whole("DATE_TIME", v), OperatorConfig("custom", {"lambda": lambda x: x[:4]})),
    ("postcode", "ZIP", lambda v: whole("ZIP", v), OperatorConfig("custom", {"lambda": lambda x: x[:3]})),
]


def apply(line):
    record = json.loads(line)
    for field, entity, spans, op in RULES:
        value = record.get(field)
        if not isinstance(value, str):
            continue
        found = spans(value)
        config = op or OperatorConfig(
            "mask", {"masking_char": "*", "chars_to_mask": found[0].end - found[0].start, "from_end": False}
        )
        record[field] = engine.anonymize(text=value, analyzer_results=found, operators={entity: config}).text
    return json.dumps(record)


lines = open(sys.argv[1]).read().splitlines()
passes = int(sys.argv[2])
times = []
for _ in range(passes):
    t = time.process_time()
    out = [apply(l) for l in lines]
    times.append(time.process_time() - t)
times.sort()
print(times[len(times) // 2], len(lines))
print(out[0])
