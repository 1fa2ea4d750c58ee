# Rego policy of examples/authz.yaml (OPA's language, v1 syntax), evaluated in process.
#
# The input document: input.request (method, path, route, params, query, query_folded,
# headers without secrets, client_ip, action), input.principal (subject, scopes expanded through the
# hierarchy, roles, tenant, claims …), input.time (unix seconds).
package orders

import rego.v1

default allow := false

# Refunds: only clerks, only for amounts up to 500, only on weekdays (UTC).
#
# Every amount the request carries is checked, under every spelling a backend may read as
# `amount` (query_folded: `Amount=`, `amount[]=`, pairs after a `;`): a backend that takes the
# last of `amount=100&amount=900` must not be handed the 900 unchecked. A value that is not a
# number makes to_number fail, and a policy that fails denies (503).
amounts := [to_number(a) | some a in input.request.query_folded.amount]

allow if {
	"clerk" in input.principal.roles
	count(amounts) > 0
	every a in amounts { a <= 500 }
	weekday
}

weekday if not time.weekday(input.time * 1000000000) in {"Saturday", "Sunday"}

reasons contains "the clerk role is required" if not "clerk" in input.principal.roles

reasons contains "amounts above 500 need a manager" if {
	some a in amounts
	a > 500
}

reasons contains "no amount given" if count(amounts) == 0

reasons contains "refunds are not made at weekends" if not weekday

# The decision the route asks for: allow or deny, why, and a header for the backend.
decision := {
	"allow": allow,
	"reasons": [r | some r in reasons],
	"headers": {"x-refund-approved-by": "policy:orders"},
}
