# kms_exporter event-driven refresh, member side (see docs/events.md): forwards this account's and
# this region's KMS events from the default bus to the central bus. One instance per account and
# region (a provider per region). The same as deploy/events/cloudformation/kms-events-forwarder.yaml.

data "aws_caller_identity" "current" {}

# Cross-account event-bus targets need a role EventBridge assumes (mandatory when the central bus
# trusts the organisation rather than account ids). It may put events on the central bus, nothing else.
resource "aws_iam_role" "forward" {
  name_prefix = "kms-exporter-forward-"
  description = "EventBridge puts this account's KMS events on the kms_exporter central bus"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "put_events" {
  name = "put-events-on-the-kms-exporter-bus"
  role = aws_iam_role.forward.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "PutEventsOnTheCentralBusOnly"
      Effect   = "Allow"
      Action   = "events:PutEvents"
      Resource = var.central_event_bus_arn
    }]
  })
}

resource "aws_cloudwatch_event_rule" "forward" {
  name_prefix    = "kms-exporter-forward-"
  description    = "KMS key changes to the kms_exporter central event bus"
  event_bus_name = "default"
  # One pattern file for both modules; a test holds it equal to the CloudFormation templates'.
  event_pattern = file("${path.module}/../kms-event-pattern.json")
  tags          = var.tags
}

resource "aws_cloudwatch_event_target" "central_bus" {
  rule      = aws_cloudwatch_event_rule.forward.name
  target_id = "kms-exporter-central-bus"
  arn       = var.central_event_bus_arn
  role_arn  = aws_iam_role.forward.arn
  dead_letter_config {
    arn = aws_sqs_queue.forward_dlq.arn
  }
}

# Events the central bus refuses (a wrong bus policy or role) land here instead of being lost
# silently; alarm on its depth, or on the rule's FailedInvocations.
resource "aws_sqs_queue" "forward_dlq" {
  name_prefix               = "kms-exporter-forward-dlq-"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue_policy" "forward_dlq" {
  queue_url = aws_sqs_queue.forward_dlq.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "OnlyTheForwardingRule"
        Effect    = "Allow"
        Principal = { Service = "events.amazonaws.com" }
        Action    = "sqs:SendMessage"
        Resource  = aws_sqs_queue.forward_dlq.arn
        Condition = { ArnEquals = { "aws:SourceArn" = aws_cloudwatch_event_rule.forward.arn } }
      },
      {
        Sid       = "TLSOnly"
        Effect    = "Deny"
        Principal = "*"
        Action    = "sqs:*"
        Resource  = aws_sqs_queue.forward_dlq.arn
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
}
