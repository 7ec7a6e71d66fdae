# The fault soak (issue 6): N mixed tasks while worker processes are SIGKILLed throughout and the
# operator, PostgreSQL and the kube-apiserver are each restarted once. Starts and stops its own
# control plane, PostgreSQL and operator; the last line is the verdict, and the exit status follows it:
#   chaos: submitted=N succeeded=N dead_letter=N lost=0 duplicated=0 mismatched=0 faults=N
# Included from the Makefile (`include mk/chaos.mk`); uses its PY and `binaries`.

.PHONY: chaos chaos-quick

## chaos: the soak, 10,000 tasks
chaos: binaries
	$(PY) -m tests.faults.chaos

## chaos-quick: the same soak with 1,000 tasks (< 10 min)
chaos-quick: binaries
	$(PY) -m tests.faults.chaos --quick
