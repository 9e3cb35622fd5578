# kms_exporter event-driven refresh, central side (see docs/events.md): the SQS queue (and its
# dead-letter queue) that kms_exporter long-polls with --events.sqs-queue-url, the EventBridge
# rule(s) that send it the KMS events, and the bus policy that lets the organisation forward to it.
# The same as deploy/events/cloudformation/kms-events-queue.yaml.

locals {
  custom_bus = var.event_bus_name != "default"
  # This account's and region's own KMS events arrive on the default bus; forwarded ones on the
  # custom bus when there is one.
  rule_buses = local.custom_bus ? { local = "default", forwarded = var.event_bus_name } : { local = "default" }
  bus_arn    = local.custom_bus ? aws_cloudwatch_event_bus.central[0].arn : data.aws_cloudwatch_event_bus.default.arn
}

resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.queue_name}-dlq"
  sqs_managed_sse_enabled   = true
  message_retention_seconds = var.dead_letter_retention_seconds
  tags                      = var.tags
}

resource "aws_sqs_queue" "events" {
  name                       = var.queue_name
  sqs_managed_sse_enabled    = true
  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.message_retention_seconds
  receive_wait_time_seconds  = 20
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

data "aws_cloudwatch_event_bus" "default" {
  name = "default"
}

resource "aws_cloudwatch_event_bus" "central" {
  count = local.custom_bus ? 1 : 0
  name  = var.event_bus_name
  tags  = var.tags
}

resource "aws_cloudwatch_event_rule" "kms" {
  for_each       = local.rule_buses
  name_prefix    = "kms-exporter-${each.key}-"
  description    = "KMS key changes to the kms_exporter queue"
  event_bus_name = each.value
  # One pattern file for both modules; a test holds it equal to the CloudFormation templates'.
  event_pattern = file("${path.module}/../kms-event-pattern.json")
  tags          = var.tags
  depends_on    = [aws_cloudwatch_event_bus.central]
}

resource "aws_cloudwatch_event_target" "queue" {
  for_each       = aws_cloudwatch_event_rule.kms
  rule           = each.value.name
  event_bus_name = each.value.event_bus_name
  target_id      = "kms-exporter-queue"
  arn            = aws_sqs_queue.events.arn
  dead_letter_config {
    arn = aws_sqs_queue.dead_letter.arn
  }
}

# Only EventBridge, and only for these rules, may send to the queues (the dead-letter queue also
# takes the events EventBridge could not deliver). No request without TLS.
locals {
  queue_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "OnlyTheKmsEventRules"
        Effect    = "Allow"
        Principal = { Service = "events.amazonaws.com" }
        Action    = "sqs:SendMessage"
        Resource  = [aws_sqs_queue.events.arn, aws_sqs_queue.dead_letter.arn]
        Condition = { ArnEquals = { "aws:SourceArn" = [for r in aws_cloudwatch_event_rule.kms : r.arn] } }
      },
      {
        Sid       = "DenyWithoutTls"
        Effect    = "Deny"
        Principal = "*"
        Action    = "sqs:*"
        Resource  = [aws_sqs_queue.events.arn, aws_sqs_queue.dead_letter.arn]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = local.queue_policy
}

resource "aws_sqs_queue_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  policy    = local.queue_policy
}

# The organisation's forwarding rules (module forwarder) put events on the bus.
resource "aws_cloudwatch_event_bus_policy" "organization" {
  count          = var.organization_id == "" ? 0 : 1
  event_bus_name = var.event_bus_name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "kms-exporter-organization-put-events"
      Effect    = "Allow"
      Principal = "*"
      Action    = "events:PutEvents"
      Resource  = local.bus_arn
      Condition = { StringEquals = { "aws:PrincipalOrgID" = var.organization_id } }
    }]
  })
}
