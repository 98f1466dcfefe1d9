# The two commands of the README, and the install. Everything else lives in scripts/.
# make install [PREFIX=/usr/local] [SYSCONFDIR=/etc] [DESTDIR=] [CRI_CONFIG=FILE]
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
export PREFIX SYSCONFDIR DESTDIR CRI_CONFIG
.PHONY: demo test install uninstall
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
install:
	bash scripts/install.sh install
uninstall:
	bash scripts/install.sh uninstall
