//! Dub's rules for `/track/lead` and `/track/sale`: routing, authentication, lead
//! de-duplication, sale idempotency by invoice, and the events that get recorded.
//!
//! Every click ID is treated as a click on one mock link, so there is no "click not found";
//! customers, leads and sales live in memory until [`MockDub::reset`](super::MockDub::reset).

use super::history::History;
use super::records::{RecordedLead, RecordedSale};
use super::reply::Reply;
use super::schema::{self, LeadInput, Mode, Rejection, SaleInput};
use super::window::SlidingWindow;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What the rules need from an HTTP request.
pub(crate) struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Every `Authorization` header, in order.
    pub authorization: Vec<String>,
    pub body: &'a [u8],
}

/// What a request is judged by besides the workspace's data: the key's rate limit and the
/// time.
pub(crate) struct Context<'a> {
    pub window: &'a mut SlidingWindow,
    pub now_ms: u64,
    /// How long an `async` lead's event stays invisible to sales (Dub writes it in the
    /// background); `None` makes it visible at once.
    pub lead_race: Option<Duration>,
    /// How long a sale's response stays unwritten in the invoice cache (Dub reads the cache,
    /// records the sale, and writes the cache after answering); `None` writes it at once.
    pub invoice_race: Option<Duration>,
}

/// Dub's state for the one workspace the mock serves (the server side; the client is
/// [`crate::Dub`]).
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    customers: HashMap<String, Customer>,
    /// customerExternalId + normalised event name of every lead tracked outside `deferred` mode.
    lead_keys: HashSet<(String, String)>,
    /// invoiceId -> the first successful response, exact bytes, and when it became readable.
    invoices: HashMap<String, CachedSale>,
    pub leads: History<RecordedLead>,
    pub sales: History<RecordedSale>,
    next_customer: u64,
}

/// A sale's response as Dub caches it for its invoice.
#[derive(Debug, Clone)]
struct CachedSale {
    body: Vec<u8>,
    /// Epoch ms from which a later sale for the invoice reads it.
    readable_ms: u64,
}

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    name: String,
    email: Option<String>,
    avatar: Option<String>,
    external_id: String,
    click_id: String,
    /// Names of the lead events recorded for this customer, with the time (epoch ms) from
    /// which a sale can see each.
    lead_events: Vec<(String, u64)>,
}

impl Customer {
    fn lead_json(&self) -> Value {
        json!({
            "name": self.name,
            "email": self.email,
            "avatar": self.avatar,
            "externalId": self.external_id,
        })
    }

    fn sale_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "avatar": self.avatar,
            "externalId": self.external_id,
        })
    }
}

const INVALID_JSON: &str =
    "Invalid JSON format in request body. Please ensure the request body is a valid JSON object.";
const MISCONFIGURED_AUTH: &str = "Misconfigured authorization header. Did you forget to add 'Bearer '? Learn more: https://d.to/auth";

impl Workspace {
    /// An empty workspace keeping the last `history` leads and sales.
    pub(crate) fn new(history: usize) -> Workspace {
        Workspace {
            leads: History::new(history),
            sales: History::new(history),
            ..Workspace::default()
        }
    }

    /// Answers one request as Dub would: route, then auth, then JSON, then the schema, then
    /// the operation.
    pub fn handle(&mut self, token: &str, req: &Incoming<'_>, cx: Context<'_>) -> Reply {
        let lead = match req.path {
            "/track/lead" => true,
            "/track/sale" => false,
            _ => {
                return Reply::error(
                    404,
                    "not_found",
                    &format!("The requested endpoint {} does not exist.", req.path),
                );
            }
        };
        if req.method != "POST" {
            let mut reply = Reply::error(
                405,
                "method_not_allowed",
                &format!("Method {} is not allowed on {}.", req.method, req.path),
            );
            reply.push_header("allow", "POST".to_owned());
            return reply;
        }
        if let Err(rejection) = authorize(token, &req.authorization) {
            return rejection.into();
        }
        // Dub's limiter runs once the key is known, before the body is looked at; from here
        // every request counts against the key, whatever its outcome.
        let rate = match cx.window.hit(cx.now_ms) {
            Ok(rate) => rate,
            Err(rate) => return Reply::refused(rate),
        };
        let mut reply = self.track(lead, req.body, &cx);
        reply.rate = Some(rate);
        reply
    }

    fn track(&mut self, lead: bool, body: &[u8], cx: &Context<'_>) -> Reply {
        let Some(body) = parse_json(body) else {
            return Rejection::bad_request(INVALID_JSON).into();
        };
        let now_ms = cx.now_ms;
        let result = if lead {
            let visible_ms = later(now_ms, cx.lead_race);
            schema::lead(&body).map(|input| self.track_lead(input, &body, now_ms, visible_ms))
        } else {
            let readable_ms = later(now_ms, cx.invoice_race);
            schema::sale(&body).and_then(|input| self.track_sale(input, &body, now_ms, readable_ms))
        };
        result.unwrap_or_else(Reply::from)
    }

    fn track_lead(&mut self, input: LeadInput, body: &Value, now_ms: u64, async_ms: u64) -> Reply {
        let external_id = input.customer_external_id.clone();
        let existing = self.customers.get(&external_id);
        let click_id = if input.click_id.is_empty() {
            match existing
                .map(|c| c.click_id.clone())
                .filter(|c| !c.is_empty())
            {
                Some(stored) => stored,
                None => {
                    return Rejection::bad_request(
                        "The `clickId` property was not provided in the request, and no existing customer with the provided `customerExternalId` was found.",
                    )
                    .into();
                }
            }
        } else {
            input.click_id.clone()
        };

        // Dub keys de-duplication on the event name lowercased with spaces as dashes, so
        // "Sign Up" and "sign-up" are the same event; `deferred` skips it.
        let key = (
            external_id.clone(),
            input.event_name.to_lowercase().replace(' ', "-"),
        );
        if input.mode != Mode::Deferred && !self.lead_keys.insert(key) {
            let customer = match existing {
                Some(c) => c.lead_json(),
                None => json!({
                    "name": fallback_name(&input.customer_name, &input.customer_email)
                        .unwrap_or_else(|| "Mock Customer".to_owned()),
                    "email": input.customer_email.as_deref().filter(|e| !e.is_empty()),
                    "avatar": input.customer_avatar.as_deref().filter(|a| !a.is_empty()),
                    "externalId": external_id,
                }),
            };
            let reply = json!({ "click": { "id": click_id }, "link": null, "customer": customer });
            return Reply::json(200, &reply);
        }

        let customer = customer_for(
            &mut self.customers,
            &mut self.next_customer,
            &external_id,
            &click_id,
            (
                &input.customer_name,
                &input.customer_email,
                &input.customer_avatar,
            ),
        );
        if input.mode != Mode::Deferred {
            // `async` (the default) writes the event in the background: a sale right after
            // it may not see it yet. `wait` writes it before answering.
            let visible_ms = if input.mode == Mode::Async {
                async_ms
            } else {
                now_ms
            };
            customer
                .lead_events
                .push((input.event_name.clone(), visible_ms));
            for _ in 0..input.event_quantity.unwrap_or(1) {
                self.leads.push(RecordedLead {
                    customer_external_id: external_id.clone(),
                    event_name: input.event_name.clone(),
                    click_id: click_id.clone(),
                    customer_id: customer.id.clone(),
                    body: body.clone(),
                });
            }
        }
        let reply = json!({ "click": { "id": click_id }, "link": mock_link(), "customer": customer.lead_json() });
        Reply::json(200, &reply)
    }

    fn track_sale(
        &mut self,
        input: SaleInput,
        body: &Value,
        now_ms: u64,
        cached_from_ms: u64,
    ) -> Result<Reply, Rejection> {
        let invoice_id = input.invoice_id.clone().filter(|i| !i.is_empty());
        // Dub reads the invoice's cached response before recording and writes it only after
        // answering: a sale that arrives before that write records the invoice again.
        let cached = invoice_id
            .as_ref()
            .and_then(|i| self.invoices.get(i))
            .filter(|cached| cached.readable_ms <= now_ms);
        if let Some(cached) = cached {
            return Ok(Reply::with_body(
                200,
                "application/json",
                cached.body.clone(),
            ));
        }
        let external_id = input.customer_external_id.clone();
        let nulls = json!({ "eventName": input.event_name, "customer": null, "sale": null });

        if let Some(customer) = self.customers.get(&external_id) {
            // A lead still being written is not found, exactly as one never sent.
            let has_lead = customer.lead_events.iter().any(|(event, visible_ms)| {
                *visible_ms <= now_ms
                    && input
                        .lead_event_name
                        .as_ref()
                        .is_none_or(|name| name == event)
            });
            if !has_lead {
                let name = input.lead_event_name.as_deref().unwrap_or("null");
                return Err(Rejection {
                    status: 404,
                    code: "not_found",
                    message: format!(
                        "Lead event not found for externalId: {external_id} and leadEventName: {name}"
                    ),
                });
            }
        } else {
            // Direct sale tracking: with a click, Dub creates the customer and records a lead
            // for it before the sale; without one the sale is silently dropped.
            let Some(click_id) = input.click_id.clone().filter(|c| !c.is_empty()) else {
                return Ok(Reply::json(200, &nulls));
            };
            let lead_name = input
                .lead_event_name
                .clone()
                .unwrap_or_else(|| "Direct sale tracking lead event".to_owned());
            let customer = customer_for(
                &mut self.customers,
                &mut self.next_customer,
                &external_id,
                &click_id,
                (
                    &input.customer_name,
                    &input.customer_email,
                    &input.customer_avatar,
                ),
            );
            customer.lead_events.push((lead_name.clone(), now_ms));
            self.leads.push(RecordedLead {
                customer_external_id: external_id.clone(),
                event_name: lead_name,
                click_id,
                customer_id: customer.id.clone(),
                body: body.clone(),
            });
        }

        let customer = match self.customers.get(&external_id) {
            Some(customer) if input.amount > 0 => customer,
            _ => return Ok(Reply::json(200, &nulls)),
        };
        self.sales.push(RecordedSale {
            customer_external_id: external_id.clone(),
            customer_id: customer.id.clone(),
            amount: input.amount,
            currency: input.currency.clone(),
            event_name: input.event_name.clone(),
            payment_processor: input.payment_processor.clone(),
            invoice_id: input.invoice_id.clone(),
            body: body.clone(),
        });
        let response = json!({
            "eventName": input.event_name,
            "customer": customer.sale_json(),
            "sale": {
                "amount": input.amount,
                "currency": input.currency,
                "paymentProcessor": input.payment_processor,
                "invoiceId": input.invoice_id,
                "metadata": input.metadata,
            },
        });
        let reply = Reply::json(200, &response);
        if let Some(invoice_id) = invoice_id {
            // The first response is kept. (Dub's background write for a racing duplicate would
            // later replace it with the duplicate's own response; either answers for the
            // invoice, and keeping one makes "returned byte for byte" checkable.)
            self.invoices.entry(invoice_id).or_insert(CachedSale {
                body: reply.body.clone(),
                readable_ms: cached_from_ms,
            });
        }
        Ok(reply)
    }
}

/// `now_ms` plus an optional delay, saturating.
fn later(now_ms: u64, delay: Option<Duration>) -> u64 {
    delay.map_or(now_ms, |delay| {
        now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    })
}

/// The deepest nesting the mock parses. Dub reads bodies with JavaScript's `JSON.parse`, which
/// takes nesting far deeper than serde_json's default limit of 128 (metadata is free-form);
/// the bound keeps parsing within a worker thread's stack.
const MAX_DEPTH: usize = 512;

fn parse_json(body: &[u8]) -> Option<Value> {
    use serde::Deserialize;
    if nesting(body) > MAX_DEPTH {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

/// The deepest nesting of arrays and objects in JSON text, strings skipped.
fn nesting(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The customer with this external ID, created on first sight. Like Dub, an existing customer
/// keeps its name, email and click. A free function so the caller can keep using the other
/// fields of [`Workspace`] while holding the customer.
fn customer_for<'a>(
    customers: &'a mut HashMap<String, Customer>,
    counter: &mut u64,
    external_id: &str,
    click_id: &str,
    details: (&Option<String>, &Option<String>, &Option<String>),
) -> &'a mut Customer {
    let (name, email, avatar) = details;
    customers.entry(external_id.to_owned()).or_insert_with(|| {
        *counter += 1;
        let n = *counter;
        Customer {
            id: format!("cus_mock{n:016}"),
            name: fallback_name(name, email).unwrap_or_else(|| format!("Mock Customer {n}")),
            email: email.clone().filter(|e| !e.is_empty()),
            avatar: avatar.clone().filter(|a| !a.is_empty()),
            external_id: external_id.to_owned(),
            click_id: click_id.to_owned(),
            lead_events: Vec::new(),
        }
    })
}

/// Dub names a customer after the name given, else the email, else at random.
fn fallback_name(name: &Option<String>, email: &Option<String>) -> Option<String> {
    [name, email]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .cloned()
}

fn mock_link() -> Value {
    json!({
        "id": "link_mock0000000000000000001",
        "domain": "dub.sh",
        "key": "mock",
        "shortLink": "https://dub.sh/mock",
        "url": "https://example.com/",
        "partnerId": null,
        "programId": null,
        "tenantId": null,
        "externalId": null,
    })
}

fn authorize(token: &str, headers: &[String]) -> Result<(), Rejection> {
    if headers.is_empty() {
        return Err(Rejection {
            status: 401,
            code: "unauthorized",
            message: "Missing Authorization header.".to_owned(),
        });
    }
    // A fetch `Headers` object joins repeated headers with ", ", and that is what Dub checks.
    let header = headers.join(", ");
    let Some(given) = header.strip_prefix("Bearer ") else {
        return Err(Rejection::bad_request(MISCONFIGURED_AUTH));
    };
    if given != token {
        return Err(Rejection {
            status: 401,
            code: "unauthorized",
            message: "Unauthorized: Invalid API key.".to_owned(),
        });
    }
    Ok(())
}

impl From<Rejection> for Reply {
    fn from(r: Rejection) -> Reply {
        Reply::error(r.status, r.code, &r.message)
    }
}
