//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the types' derives.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{deliveries, destinations, error, events, jobs, routes, sources, stats, tail};

#[derive(OpenApi)]
#[openapi(
    info(title = "hookgate admin API", description = "Sources, destinations, routes, events, replay and dead letter. \
        Every route needs `Authorization: Bearer <token>`; GET (and `POST /routes/test`, which changes nothing) needs a `read` \
        or `write` token, everything else a `write` token. Errors are RFC 7807 problems (`application/problem+json`) with a stable `type`."),
    paths(
        document,
        sources::list, sources::create, sources::get, sources::update, sources::delete, sources::rotate_secret,
        destinations::list, destinations::create, destinations::get, destinations::update, destinations::delete,
        destinations::rotate_secret, destinations::pause, destinations::resume, destinations::health,
        deliveries::list_for_destination, deliveries::retry_dead_of_destination,
        deliveries::cancel_pending_of_destination, deliveries::retry, deliveries::cancel,
        routes::list, routes::create, routes::test, routes::get, routes::update, routes::delete,
        events::list, events::get, events::replay, tail::stream,
        jobs::list, jobs::create, jobs::get, jobs::cancel,
        stats::stats,
    ),
    components(schemas(error::ProblemBody, hookgate_core::state::DeliveryState, tail::TailEventView,
        tail::TailOutcomeView, tail::TailDropped, tail::TailInterrupted)),
    modifiers(&BearerAuth),
    tags((name = "sources"), (name = "destinations"), (name = "routes"), (name = "events"), (name = "replay"),
         (name = "deliveries"), (name = "stats"), (name = "meta"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Operation ids must be unique: prefix each handler's name with its tag (`sources_list`, …).
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete].into_iter().flatten() {
                let tag = op.tags.as_ref().and_then(|t| t.first()).cloned().unwrap_or_default();
                if let Some(id) = op.operation_id.as_mut() {
                    if !id.starts_with(&format!("{tag}_")) {
                        *id = format!("{tag}_{id}");
                    }
                }
            }
        }
    }
}

/// The document as JSON text.
pub fn json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into())
}

/// This document.
#[utoipa::path(get, path = "/admin/v1/openapi.json", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"),
              (status = 401, body = error::ProblemBody)))]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_and_the_document_list_the_same_operations() {
        let doc = ApiDoc::openapi();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("get", item.get.is_some()),
                ("post", item.post.is_some()),
                ("put", item.put.is_some()),
                ("delete", item.delete.is_some()),
                ("patch", item.patch.is_some()),
            ];
            for (m, present) in ops {
                if present {
                    documented.push((m.to_owned(), path.trim_start_matches("/admin/v1").to_owned()));
                }
            }
        }
        let mut table: Vec<(String, String)> =
            super::super::ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
        documented.sort();
        table.sort();
        assert_eq!(documented, table);
    }
}
