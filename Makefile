# The two commands of the README. Everything else lives in scripts/.
.PHONY: demo test
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
