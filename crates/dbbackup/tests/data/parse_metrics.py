"""Parses a metrics exposition from stdin with Prometheus' own Python parser
and prints its samples as JSON: [[name, {labels}, value], ...].

--openmetrics: the OpenMetrics parser (strict: # EOF, counter naming);
otherwise the classic text format parser. A parse error exits 1."""
import json
import sys

text = sys.stdin.read()
if "--openmetrics" in sys.argv:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families

try:
    samples = [
        [s.name, dict(s.labels), s.value]
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
except Exception as e:  # the parser's own words, for the test's message
    print(f"parse error: {e}", file=sys.stderr)
    sys.exit(1)
json.dump(samples, sys.stdout)
