"""Granting and revoking permissions as a company admin: the rules that make permissions hold.

``user grant`` and ``user revoke`` act *as* someone, and that someone must be an admin of the
company, checked inside the same optimistic transaction as the write (a demotion racing a grant
wins). No change may leave a company without an admin: the last admin can be neither revoked
nor demoted. Every change is audited (actor, host user, old and new level); a refused one is
written to the company's security log (``audit --denied``) like a refused settings change.

``SettingsStore.grant`` stays the unchecked operator primitive (``demo``, tests): anyone who can
write to Redis is an operator anyway (README, "Permission model").
"""

from __future__ import annotations

from config.models import AuditEntry, PermissionLevel
from erp_sync.control.access import level_from, require_level
from erp_sync.control.inputs import user_id
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.errors import InvalidInput, NotFound


class Permissions:
    """The admin-checked permission changes of one deployment."""

    def __init__(self, store: SettingsStore) -> None:
        self.store = store
        self.keys = store.keys

    def users(self, company_id: str) -> list[tuple[str, PermissionLevel]]:
        """Every user with a level on the company, admins first, then by name."""
        self.store.get_company(company_id)
        raw = self.store.client.hgetall(self.keys.users(company_id))
        rows = [(str(u), level_from(v)) for u, v in raw.items()]
        return sorted(rows, key=lambda r: (-r[1].rank, r[0]))

    def grant(self, company_id: str, user: str, level: str, actor: str) -> str | None:
        """Set ``user``'s level as ``actor`` (an admin); returns the previous level."""
        if level not in set(PermissionLevel):
            raise InvalidInput(f"invalid level {level!r} (one of: {', '.join(PermissionLevel)})")
        return self._change(company_id, user, PermissionLevel(level), actor, "user.grant")

    def revoke(self, company_id: str, user: str, actor: str) -> str | None:
        """Remove ``user``'s level as ``actor`` (an admin); returns the previous level."""
        return self._change(company_id, user, None, actor, "user.revoke")

    def _change(
        self, company_id: str, user: str, level: PermissionLevel | None, actor: str, action: str
    ) -> str | None:
        user_id(actor)
        user_id(user)
        self.store.get_company(company_id)
        users_key = self.keys.users(company_id)

        def write(work: UnitOfWork) -> str | None:
            pipe = work.pipe
            current = {str(u): str(v) for u, v in pipe.hgetall(users_key).items()}
            # A company with no admin at all (made before `company add --admin`, or without
            # it) gets its first one by an operator: that grant is also in the operator log.
            bootstrap = (
                level is PermissionLevel.ADMIN
                and PermissionLevel.ADMIN.value not in current.values()
            )
            if not bootstrap:
                require_level(
                    company_id, actor, level_from(current.get(actor)), PermissionLevel.ADMIN
                )
            old = current.get(user)
            if level is None and old is None:
                raise NotFound(f"user {user!r} has no permission on {company_id!r}")
            after = dict(current)
            if level is None:
                after.pop(user, None)
            else:
                after[user] = level.value
            if (
                old == PermissionLevel.ADMIN.value
                and PermissionLevel.ADMIN.value not in after.values()
            ):
                raise InvalidInput(
                    f"{user!r} is the last admin of {company_id!r}; grant admin "
                    "to someone else first"
                )
            work.begin()
            if level is None:
                pipe.hdel(users_key, user)
            else:
                pipe.hset(users_key, user, level.value)
            entry = AuditEntry(
                at=self.store.clock(),
                actor=actor,
                action=action,
                company=company_id,
                old={"user": user, "level": old},
                new={"user": user, "level": level.value if level else None},
            )
            work.audit(entry)
            if bootstrap:
                work.operator(entry.model_copy(update={"action": "user.grant_first_admin"}))
            return old

        return self.store.transact(
            [users_key],
            write,
            Denied(
                company_id, actor, action, {"user": user, "level": level.value if level else None}
            ),
        )
