"""Deterministic construction-company data for a fake company (the same realm id and spec give
the same records, times apart, which follow the clock the realm was created at).

What is made, in QuickBooks Online's shapes (Intuit's entity reference and sample objects):

- Vendors (subcontractors and suppliers) with DisplayName, CompanyName, BillAddr, a masked
  TaxIdentifier on 1099 vendors (``XXXXXX1234``, as Intuit returns it).
- Parent customers (one per five projects, ``customers`` to override), and Projects: Customers
  with ``IsProject: true``, ``Job: true``, ``ParentRef`` and ``FullyQualifiedName``
  "Parent:Project"; the DisplayName starts with the project number.
- Per project: Bills, Purchases (expenses) and VendorCredits whose ``Line`` items alternate
  ``ItemBasedExpenseLineDetail`` (an ``ItemRef`` named ``[project number]-[cost code].[cost type]``,
  Procore's WBS item naming, with Qty and UnitPrice) and ``AccountBasedExpenseLineDetail`` (an
  ``AccountRef``), each with ``CustomerRef`` naming the project; BillPayments whose lines link
  the project's Bills (``LinkedTxn`` ``TxnType: "Bill"``), and the Bills link back and carry
  the remaining ``Balance``.
- Money is a JSON number in dollars with at most two decimals, summed in cents (no float drift).
- Create times spread evenly over ``history_days`` (default 60) up to an hour ago, so a first
  sync meets data both older and newer than CDC's 30 days; one record in five was edited later
  (SyncToken 1-3). ``inactive_every: N`` makes every Nth vendor and project inactive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from . import timefmt
from .store import Record, Store

JsonObject = dict[str, Any]
NAMES = [
    "Summit",
    "Redwood",
    "Cascade",
    "Ironclad",
    "Bayside",
    "Keystone",
    "Granite",
    "Pioneer",
    "Harbor",
    "Northgate",
    "Sierra",
    "Lakeside",
    "Cornerstone",
    "Evergreen",
    "Atlas",
    "Meridian",
    "Valley",
    "Ridgeline",
    "Coastal",
    "Frontier",
]
TRADES = [
    "Concrete",
    "Framing",
    "Electric",
    "Plumbing",
    "Roofing",
    "Drywall",
    "Excavation",
    "Steel",
    "Glazing",
    "Masonry",
    "HVAC",
    "Paving",
    "Insulation",
    "Painting",
    "Flooring",
    "Landscaping",
    "Fire Protection",
    "Elevator",
    "Millwork",
    "Demolition",
]
SUFFIXES = ["Inc.", "LLC", "Co.", "Corp.", "& Sons"]
OWNERS = ["Developers", "Properties", "Holdings", "Partners", "Capital"]
KINDS = [
    "Office Build-Out",
    "Retail Renovation",
    "Warehouse",
    "Medical Clinic",
    "School Addition",
    "Mixed-Use Tower",
    "Parking Structure",
    "Residential Complex",
]
STREETS = ["Oak", "Main", "Market", "Mission", "Elm", "Cedar", "Harbor", "Hill", "Lake", "Park"]
CITIES = [
    ("Oakland", "CA", "94607"),
    ("Sacramento", "CA", "95814"),
    ("Portland", "OR", "97204"),
    ("Reno", "NV", "89501"),
    ("Boise", "ID", "83702"),
    ("Fresno", "CA", "93721"),
]
COST_CODES = ["01-100", "03-300", "05-120", "06-100", "09-250", "22-100", "26-050", "31-200"]
COST_TYPES = ["L", "M", "S", "E", "O"]
EXPENSE_ACCOUNTS = [
    {"value": "60", "name": "Job Expenses:Job Materials"},
    {"value": "61", "name": "Job Expenses:Subcontractors"},
    {"value": "62", "name": "Job Expenses:Equipment Rental"},
    {"value": "63", "name": "Job Expenses:Permits"},
]
AP = {"value": "33", "name": "Accounts Payable (A/P)"}
BANK = {"value": "35", "name": "Checking"}
CARD = {"value": "41", "name": "Mastercard"}
USD = {"value": "USD", "name": "United States Dollar"}


@dataclass(frozen=True)
class SeedSpec:
    vendors: int = 0
    projects: int = 0
    bills_per_project: int = 0
    lines_per_bill: int = 2
    purchases_per_project: int = 0
    vendor_credits_per_project: int = 0
    payments_per_project: int = 0
    customers: int | None = None
    inactive_every: int = 0
    history_days: int = 60

    def to_json(self) -> JsonObject:
        """The body ``POST /_admin/realms`` takes under ``seed`` (what ``from_json`` reads)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_json(cls, data: JsonObject) -> SeedSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown seed fields: {', '.join(unknown)}")
        spec = cls(**data)
        for f in fields(cls):
            value = getattr(spec, f.name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"seed.{f.name} must be a non-negative integer")
        if (
            spec.vendors == 0
            and spec.projects
            and (
                spec.bills_per_project
                or spec.purchases_per_project
                or spec.vendor_credits_per_project
            )
        ):
            raise ValueError("transactions need vendors: seed.vendors must be positive")
        if spec.customers == 0 and spec.projects:
            raise ValueError("projects need parent customers: seed.customers must be positive")
        if spec.payments_per_project and not spec.bills_per_project:
            raise ValueError("payments link bills: seed.bills_per_project must be positive")
        return spec


def money(cents: int) -> float:
    return round(cents / 100, 2)


def ref(record: Record, name_field: str = "DisplayName") -> JsonObject:
    return {"value": record.id, "name": record.body[name_field]}


class Seeder:
    def __init__(self, store: Store, spec: SeedSpec, realm_id: str, now: int) -> None:
        self.store, self.spec = store, spec
        self.rng = random.Random(f"fake-qbo:{realm_id}")
        self.end = now - 3600
        self.start = now - spec.history_days * timefmt.DAY

    def when(self, i: int, n: int) -> int:
        return self.start + (self.end - self.start) * i // max(n, 1)

    def add(self, entity: str, body: JsonObject, created: int) -> Record:
        if self.rng.random() < 0.2:
            updated = min(self.end, created + self.rng.randint(60, 10 * timefmt.DAY))
            return self.store.create(entity, body, created, updated, self.rng.randint(1, 3))
        return self.store.create(entity, body, created)

    def address(self, i: int) -> JsonObject:
        city, state, postal = CITIES[i % len(CITIES)]
        return {
            "Id": str(1000 + i),
            "Line1": f"{100 + i % 900} {STREETS[i % 10]} St",
            "City": city,
            "CountrySubDivisionCode": state,
            "PostalCode": postal,
        }

    def vendor(self, i: int) -> Record:
        name = f"{NAMES[i % 20]} {TRADES[i // 20 % 20]} {SUFFIXES[i // 400 % 5]}"
        name += f" {i // 2000 + 1}" if i >= 2000 else ""
        body: JsonObject = {
            "DisplayName": name,
            "CompanyName": name,
            "PrintOnCheckName": name,
            "Active": not (self.spec.inactive_every and (i + 1) % self.spec.inactive_every == 0),
            "Vendor1099": i % 3 == 0,
            "AcctNum": f"V{i + 1:05d}",
            "Balance": 0,
            "BillAddr": self.address(i),
            "CurrencyRef": USD,
            "PrimaryPhone": {"FreeFormNumber": f"(510) 555-{i % 10000:04d}"},
            "PrimaryEmailAddr": {"Address": f"ap{i + 1}@{NAMES[i % 20].lower()}.example"},
        }
        if i % 3 == 0:
            body["TaxIdentifier"] = f"XXXXXX{self.rng.randint(0, 9999):04d}"
        return self.add("Vendor", body, self.when(i, self.spec.vendors))

    def parent(self, i: int, n: int) -> Record:
        name = f"{NAMES[i % 20]} {OWNERS[i // 20 % 5]}" + (f" {i // 100 + 1}" if i >= 100 else "")
        return self.add(
            "Customer",
            {
                "DisplayName": name,
                "CompanyName": name,
                "FullyQualifiedName": name,
                "PrintOnCheckName": name,
                "Active": True,
                "Job": False,
                "IsProject": False,
                "BillWithParent": False,
                "Taxable": False,
                "Balance": 0,
                "BalanceWithJobs": 0,
                "BillAddr": self.address(i + 7),
                "CurrencyRef": USD,
                "PreferredDeliveryMethod": "Print",
            },
            self.when(i, n),
        )

    def project(self, i: int, parent: Record) -> Record:
        number = f"{2020 + i % 6}-{i + 1:04d}"
        name = f"{number} {STREETS[i % 10]} Street {KINDS[i % len(KINDS)]}"
        return self.add(
            "Customer",
            {
                "DisplayName": name,
                "FullyQualifiedName": f"{parent.body['DisplayName']}:{name}",
                "PrintOnCheckName": parent.body["DisplayName"],
                "ParentRef": ref(parent),
                "Level": 1,
                "Job": True,
                "IsProject": True,
                "BillWithParent": False,
                "Active": not (
                    self.spec.inactive_every and (i + 1) % self.spec.inactive_every == 0
                ),
                "Taxable": False,
                "Balance": 0,
                "BalanceWithJobs": 0,
                "ShipAddr": self.address(i),
                "CurrencyRef": USD,
                "Notes": f"Project number {number}",
            },
            self.when(i, self.spec.projects),
        )

    def lines(self, p: int, project: Record, n: int) -> tuple[list[JsonObject], int]:
        number = project.body["DisplayName"].split(" ")[0]
        customer = {"value": project.id, "name": project.body["FullyQualifiedName"]}
        out, total = [], 0
        for k in range(n):
            line: JsonObject = {"Id": str(k + 1), "LineNum": k + 1}
            if k % 2 == 0:
                c, t = self.rng.randrange(len(COST_CODES)), self.rng.randrange(len(COST_TYPES))
                qty, unit = self.rng.randint(1, 20), self.rng.randint(500, 250_000)
                cents = qty * unit
                line |= {
                    "Description": f"{COST_CODES[c]}.{COST_TYPES[t]} work, qty {qty}",
                    "Amount": money(cents),
                    "DetailType": "ItemBasedExpenseLineDetail",
                    "ItemBasedExpenseLineDetail": {
                        "ItemRef": {
                            "value": str(1 + p * 40 + c * 5 + t),
                            "name": f"{number}-{COST_CODES[c]}.{COST_TYPES[t]}",
                        },
                        "CustomerRef": customer,
                        "Qty": qty,
                        "UnitPrice": money(unit),
                        "BillableStatus": "NotBillable",
                        "TaxCodeRef": {"value": "NON"},
                    },
                }
            else:
                cents = self.rng.randint(10_000, 5_000_000)
                account = EXPENSE_ACCOUNTS[self.rng.randrange(len(EXPENSE_ACCOUNTS))]
                line |= {
                    "Description": account["name"].split(":")[1],
                    "Amount": money(cents),
                    "DetailType": "AccountBasedExpenseLineDetail",
                    "AccountBasedExpenseLineDetail": {
                        "AccountRef": account,
                        "CustomerRef": customer,
                        "BillableStatus": "NotBillable",
                        "TaxCodeRef": {"value": "NON"},
                    },
                }
            out.append(line)
            total += cents
        return out, total


def date_of(epoch: int, days: int = 0) -> str:
    return datetime.fromtimestamp(epoch + days * timefmt.DAY, timefmt.COMPANY_TZ).date().isoformat()


def seed(store: Store, spec: SeedSpec, realm_id: str, now: int) -> None:
    """Fill ``store`` as ``spec`` says (see the module docstring for what and how)."""
    s = Seeder(store, spec, realm_id, now)
    vendors = [s.vendor(i) for i in range(spec.vendors)]
    n_parents = spec.customers if spec.customers is not None else -(-spec.projects // 5)
    parents = [s.parent(i, n_parents) for i in range(n_parents)]
    projects = [s.project(i, parents[i % len(parents)]) for i in range(spec.projects)]
    per_project = [
        (spec.bills_per_project, "Bill"),
        (spec.purchases_per_project, "Purchase"),
        (spec.vendor_credits_per_project, "VendorCredit"),
    ]
    bills: dict[int, list[tuple[Record, int]]] = {p: [] for p in range(len(projects))}
    for per, entity in per_project:
        total_n = per * len(projects)
        for k in range(per):
            for p, project in enumerate(projects):
                g = k * len(projects) + p
                created = s.when(g, total_n)
                vendor = vendors[s.rng.randrange(len(vendors))]
                n_lines = (
                    spec.lines_per_bill
                    if entity != "VendorCredit"
                    else max(1, spec.lines_per_bill // 2)
                )
                lines, cents = s.lines(p, project, n_lines)
                body: JsonObject = {
                    "TxnDate": date_of(created),
                    "CurrencyRef": USD,
                    "TotalAmt": money(cents),
                    "Line": lines,
                }
                if entity == "Bill":
                    body |= {
                        "DocNumber": f"INV-{g + 1:06d}",
                        "VendorRef": ref(vendor),
                        "APAccountRef": AP,
                        "DueDate": date_of(created, 30),
                        "Balance": money(cents),
                    }
                elif entity == "VendorCredit":
                    body |= {
                        "DocNumber": f"VC-{g + 1:05d}",
                        "VendorRef": ref(vendor),
                        "APAccountRef": AP,
                        "Balance": money(cents),
                    }
                else:
                    kind = ("Check", "CreditCard", "Cash")[g % 3]
                    body |= {
                        "PaymentType": kind,
                        "AccountRef": CARD if kind == "CreditCard" else BANK,
                        "EntityRef": {**ref(vendor), "type": "Vendor"},
                    }
                    if kind == "Check":
                        body["DocNumber"] = str(5000 + g)
                record = s.add(entity, body, created)
                if entity == "Bill":
                    bills[p].append((record, cents))
    _payments(s, spec, bills)


def _payments(s: Seeder, spec: SeedSpec, bills: dict[int, list[tuple[Record, int]]]) -> None:
    n = spec.payments_per_project
    for project_bills in bills.values():
        nb = len(project_bills)
        for j in range(n):
            bill, cents = project_bills[j % nb]
            payers = len(range(j % nb, n, nb))
            share = cents // payers + (cents % payers if j < nb else 0)
            created = min(s.end, bill.created + s.rng.randint(1, 20) * timefmt.DAY)
            body: JsonObject = {
                "VendorRef": bill.body["VendorRef"],
                "APAccountRef": AP,
                "TxnDate": date_of(created),
                "TotalAmt": money(share),
                "CurrencyRef": USD,
                "DocNumber": str(9000 + s.store.next_id["BillPayment"]),
                "Line": [
                    {"Amount": money(share), "LinkedTxn": [{"TxnId": bill.id, "TxnType": "Bill"}]}
                ],
            }
            if j % 4 == 3:
                body |= {"PayType": "CreditCard", "CreditCardPayment": {"CCAccountRef": CARD}}
            else:
                body |= {
                    "PayType": "Check",
                    "CheckPayment": {"BankAccountRef": BANK, "PrintStatus": "NotSet"},
                }
            payment = s.store.create("BillPayment", body, created)
            bill.body.setdefault("LinkedTxn", []).append(
                {"TxnId": payment.id, "TxnType": "BillPayment"}
            )
            bill.body["Balance"] = money(round(bill.body["Balance"] * 100) - share)
