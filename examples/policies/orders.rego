# Rego policy of examples/authz.yaml (OPA's language, v1 syntax), evaluated in process.
#
# The input document: input.request (method, path, route, params, query, headers without
# secrets, client_ip, action), input.principal (subject, scopes expanded through the
# hierarchy, roles, tenant, claims …), input.time (unix seconds).
package orders

import rego.v1

default allow := false

# Refunds: only clerks, only for amounts up to 500, only on weekdays (UTC).
allow if {
	"clerk" in input.principal.roles
	to_number(input.request.query.amount[0]) <= 500
	weekday
}

weekday if not time.weekday(input.time * 1000000000) in {"Saturday", "Sunday"}

reasons contains "the clerk role is required" if not "clerk" in input.principal.roles

reasons contains "amounts above 500 need a manager" if to_number(input.request.query.amount[0]) > 500

reasons contains "no amount given" if not input.request.query.amount

reasons contains "refunds are not made at weekends" if not weekday

# The decision the route asks for: allow or deny, why, and a header for the backend.
decision := {
	"allow": allow,
	"reasons": [r | some r in reasons],
	"headers": {"x-refund-approved-by": "policy:orders"},
}
