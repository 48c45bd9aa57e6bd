"""QuickBooks Online entities as Procore-side records (field by field:
``docs/connectors/quickbooks_online.md``).

Vendors come from Vendor, jobs from Projects (Customers with ``IsProject``), job costs from the
lines of Bill, Purchase (expenses) and VendorCredit that name a project in their ``CustomerRef``
(a vendor credit's amount counts negative), and Payments Issued from BillPayment lines linked to
Bills, shown on every project the Bill's lines name. WBS codes are exported to QBO as Items named
``[project number]-[cost code].[cost type]``; a line booked to such an Item carries its cost code
and cost type, any other line keeps the Item's (or account's) name as its cost code.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from erp_sync.connectors.base import Record
from erp_sync.db.mirror import Line

COST_ENTITIES = ("Bill", "Purchase", "VendorCredit")
PAYMENT_ENTITY = "BillPayment"
_WBS = re.compile(r"[^-]+-(?P<code>.+)\.(?P<type>[^.]+)")


def cents(amount: Any) -> int:
    """Dollars (a JSON number or string) as integer cents, rounded half away from zero."""
    try:
        value = Decimal(str(amount)) * 100
    except InvalidOperation:
        return 0
    return int(value.to_integral_value(rounding="ROUND_HALF_UP"))


def ref(value: Any) -> str:
    return str(value.get("value", "")) if isinstance(value, dict) else ""


def deleted(entity: dict[str, Any]) -> bool:
    return str(entity.get("status", "")).lower() == "deleted"


def vendor(v: dict[str, Any]) -> Record:
    address = v.get("BillAddr") if isinstance(v.get("BillAddr"), dict) else {}
    return {
        "id": str(v["Id"]),
        "name": str(v.get("DisplayName") or v.get("CompanyName") or ""),
        "active": bool(v.get("Active", True)),
        "tax_id": str(v.get("TaxIdentifier") or ""),
        "city": str((address or {}).get("City") or ""),
    }


def is_project(c: dict[str, Any]) -> bool:
    return c.get("IsProject") is True


def job(c: dict[str, Any]) -> Record:
    return {
        "id": str(c["Id"]),
        "name": str(c.get("DisplayName") or c.get("FullyQualifiedName") or ""),
        "status": "open" if c.get("Active", True) else "closed",
    }


def wbs(name: str, project_name: str = "") -> tuple[str, str]:
    """(cost code, cost type) of an Item name ``[project number]-[cost code].[cost type]``.

    Project numbers may hold dashes themselves (``2020-0001``), so the number is taken from the
    project's name when the line's ``CustomerRef`` carries it (Procore names QBO projects
    ``[number] [name]``; a sub-customer's full name is ``Parent:Project``); otherwise the number
    is assumed to end at the first dash.
    """
    number = project_name.rsplit(":", 1)[-1].split(" ", 1)[0] if project_name else ""
    if number and name.startswith(f"{number}-") and "." in name:
        code, cost_type = name[len(number) + 1 :].rsplit(".", 1)
        return code, cost_type
    match = _WBS.fullmatch(name)
    return (match["code"], match["type"]) if match else (name, "")


def cost_lines(entity: str, txn: dict[str, Any]) -> list[Line]:
    """The job-cost lines of a Bill, Purchase or VendorCredit, one per line naming a project."""
    sign = -1 if entity == "VendorCredit" else 1
    payee = ref(txn.get("VendorRef")) or ref(txn.get("EntityRef"))
    out = []
    for n, line in enumerate(txn.get("Line") or [], start=1):
        detail = line.get(str(line.get("DetailType"))) or {}
        customer = detail.get("CustomerRef") or {}
        project = ref(customer)
        if not project:
            continue
        item = detail.get("ItemRef") or {}
        account = detail.get("AccountRef") or {}
        code, cost_type = (
            wbs(str(item.get("name") or ""), str(customer.get("name") or ""))
            if item
            else (str(account.get("name") or ""), "")
        )
        out.append(
            Line(
                "job_costs",
                project,
                {
                    "id": f"{entity}-{txn['Id']}-{line.get('Id') or n}",
                    "job": project,
                    "cost_code": code,
                    "cost_type": cost_type,
                    "amount_cents": sign * cents(line.get("Amount", 0)),
                    "description": str(line.get("Description") or ""),
                    "vendor": payee,
                    "txn_type": entity,
                    "txn_date": txn.get("TxnDate"),
                    "doc_number": txn.get("DocNumber"),
                },
            )
        )
    return out


def paid_bills(payment: dict[str, Any]) -> list[tuple[str, int]]:
    """(Bill id, amount in cents) of each Bill a BillPayment pays."""
    out = []
    for line in payment.get("Line") or []:
        for linked in line.get("LinkedTxn") or []:
            if linked.get("TxnType") == "Bill" and linked.get("TxnId"):
                out.append((str(linked["TxnId"]), cents(line.get("Amount", 0))))
    return out


def payment_lines(payment: dict[str, Any], projects_of_bill: dict[str, set[str]]) -> list[Line]:
    """A BillPayment as Payments Issued on every project its Bills' lines name."""
    out = []
    for bill, amount in paid_bills(payment):
        for project in sorted(projects_of_bill.get(f"Bill:{bill}", set())):
            out.append(
                Line(
                    "payments",
                    project,
                    {
                        "id": f"BillPayment-{payment['Id']}-{bill}",
                        "invoice": bill,
                        "commitment": "",
                        "amount_cents": amount,
                        "check_number": str(payment.get("DocNumber") or ""),
                        "paid_on": payment.get("TxnDate"),
                        "pay_type": payment.get("PayType"),
                    },
                )
            )
    return out
