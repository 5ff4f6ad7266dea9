"""All SQL of the project, one repository per table group, behind one ``Repos`` facade.

Every write that must be all-or-nothing runs in one transaction. Repositories take the clock as
an argument so quota windows can be tested across a month or day boundary.
"""

from __future__ import annotations

from storage.db import Database
from storage.repos._base import Clock, period_for, utcnow
from storage.repos.audit import AuditRepo, ConsentRepo
from storage.repos.jobs import JobRepo
from storage.repos.models import ModelRepo
from storage.repos.quotas import QuotaRepo
from storage.repos.users import GuildRepo, UserRepo

__all__ = [
    "AuditRepo",
    "Clock",
    "ConsentRepo",
    "GuildRepo",
    "JobRepo",
    "ModelRepo",
    "QuotaRepo",
    "Repos",
    "UserRepo",
    "period_for",
    "utcnow",
]


class Repos:
    """Every repository over one database, sharing one clock."""

    def __init__(self, db: Database, clock: Clock = utcnow) -> None:
        self.db = db
        self.users = UserRepo(db, clock)
        self.guilds = GuildRepo(db, clock)
        self.quotas = QuotaRepo(db, clock)
        self.models = ModelRepo(db, clock)
        self.jobs = JobRepo(db, clock)
        self.consents = ConsentRepo(db, clock)
        self.audit = AuditRepo(db, clock)
