output "queue_url" {
  description = "Pass to kms_exporter as --events.sqs-queue-url."
  value       = aws_sqs_queue.events.url
}

output "queue_arn" {
  description = "The Resource of the exporter's IAM statement."
  value       = aws_sqs_queue.events.arn
}

output "dead_letter_queue_url" {
  description = "Messages received max_receive_count times without being deleted, and events EventBridge could not deliver."
  value       = aws_sqs_queue.dead_letter.url
}

output "dead_letter_queue_arn" {
  value = aws_sqs_queue.dead_letter.arn
}

output "event_bus_arn" {
  description = "The central_event_bus_arn of the forwarder module."
  value       = local.bus_arn
}

output "exporter_policy" {
  description = "IAM policy for the exporter's role (deploy/iam/kms-exporter-events.json); no kms:Decrypt, the queue is encrypted with SQS-managed keys."
  value = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "ReadKmsEventsQueue"
      Effect   = "Allow"
      Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
      Resource = aws_sqs_queue.events.arn
    }]
  })
}
