# Build and install accelgate.
#
#   make                        cargo build --release
#   make install                install into $(DESTDIR)$(PREFIX) and $(DESTDIR)$(SYSCONFDIR)
#
# DESTDIR and PREFIX are honoured everywhere; the paths written into the unit and the bus
# activation file are the final ones ($(PREFIX)/...), without DESTDIR.
# `make install` does not build: it installs the binaries found in $(BUILD_DIR).

PREFIX       ?= /usr
SYSCONFDIR   ?= /etc
BINDIR       ?= $(PREFIX)/bin
LIBEXECDIR   ?= $(PREFIX)/libexec
DATADIR      ?= $(PREFIX)/share
DOCDIR       ?= $(DATADIR)/doc/accelgate
UNITDIR      ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR  ?= $(PREFIX)/lib/tmpfiles.d
DBUSCONFDIR  ?= $(DATADIR)/dbus-1/system.d
DBUSSERVICEDIR ?= $(DATADIR)/dbus-1/system-services
POLKITACTIONDIR ?= $(DATADIR)/polkit-1/actions

CARGO        ?= cargo
PROFILE      ?= release
CARGO_TARGET_DIR ?= target
BUILD_DIR    ?= $(CARGO_TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

INSTALL      ?= install
SUBST = sed -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'

.PHONY: all build install uninstall

all: build

build:
	$(CARGO) build --profile $(PROFILE) --bins

install:
	@for bin in accelgated accelctl; do \
	    test -x "$(BUILD_DIR)/$$bin" || { echo "$(BUILD_DIR)/$$bin is missing: run 'make' first" >&2; exit 1; }; \
	done
	$(INSTALL) -d -m 0755 "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(LIBEXECDIR)" "$(DESTDIR)$(UNITDIR)" \
	    "$(DESTDIR)$(SYSUSERSDIR)" "$(DESTDIR)$(TMPFILESDIR)" "$(DESTDIR)$(DBUSCONFDIR)" \
	    "$(DESTDIR)$(DBUSSERVICEDIR)" "$(DESTDIR)$(DOCDIR)" "$(DESTDIR)$(SYSCONFDIR)/accelgate"
	$(INSTALL) -m 0755 "$(BUILD_DIR)/accelgated" "$(DESTDIR)$(LIBEXECDIR)/accelgated"
	$(INSTALL) -m 0755 "$(BUILD_DIR)/accelctl" "$(DESTDIR)$(BINDIR)/accelctl"
	$(SUBST) systemd/accelgated.service > "$(DESTDIR)$(UNITDIR)/accelgated.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/accelgated.service"
	$(INSTALL) -m 0644 systemd/accelgate.sysusers.conf "$(DESTDIR)$(SYSUSERSDIR)/accelgate.conf"
	$(INSTALL) -m 0644 systemd/accelgate.tmpfiles.conf "$(DESTDIR)$(TMPFILESDIR)/accelgate.conf"
	$(INSTALL) -m 0644 dbus/org.accelgate.Accel1.conf "$(DESTDIR)$(DBUSCONFDIR)/org.accelgate.Accel1.conf"
	$(SUBST) dbus/org.accelgate.Accel1.service > "$(DESTDIR)$(DBUSSERVICEDIR)/org.accelgate.Accel1.service"
	chmod 0644 "$(DESTDIR)$(DBUSSERVICEDIR)/org.accelgate.Accel1.service"
	$(INSTALL) -m 0644 docs/install.md "$(DESTDIR)$(DOCDIR)/install.md"
	@if [ -f policy/org.accelgate.policy ]; then \
	    $(INSTALL) -d -m 0755 "$(DESTDIR)$(POLKITACTIONDIR)" && \
	    $(INSTALL) -m 0644 policy/org.accelgate.policy "$(DESTDIR)$(POLKITACTIONDIR)/org.accelgate.policy" && \
	    echo "installed $(DESTDIR)$(POLKITACTIONDIR)/org.accelgate.policy"; \
	else echo "policy/org.accelgate.policy not present: polkit actions not installed" >&2; fi
	@if [ -f policy/example.toml ]; then \
	    $(INSTALL) -m 0644 policy/example.toml "$(DESTDIR)$(SYSCONFDIR)/accelgate/policy.toml.example" && \
	    echo "installed $(DESTDIR)$(SYSCONFDIR)/accelgate/policy.toml.example"; \
	else echo "policy/example.toml not present: example policy not installed" >&2; fi

uninstall:
	rm -f "$(DESTDIR)$(LIBEXECDIR)/accelgated" "$(DESTDIR)$(BINDIR)/accelctl" \
	    "$(DESTDIR)$(UNITDIR)/accelgated.service" "$(DESTDIR)$(SYSUSERSDIR)/accelgate.conf" \
	    "$(DESTDIR)$(TMPFILESDIR)/accelgate.conf" "$(DESTDIR)$(DBUSCONFDIR)/org.accelgate.Accel1.conf" \
	    "$(DESTDIR)$(DBUSSERVICEDIR)/org.accelgate.Accel1.service" \
	    "$(DESTDIR)$(POLKITACTIONDIR)/org.accelgate.policy" \
	    "$(DESTDIR)$(SYSCONFDIR)/accelgate/policy.toml.example" "$(DESTDIR)$(DOCDIR)/install.md"
