from django.urls import path

from batches.views import (
    BatchCancelApi,
    BatchDetailApi,
    BatchListCreateApi,
    FileContentApi,
    FileDetailApi,
    FileListCreateApi,
)

urlpatterns = [
    path("files", FileListCreateApi.as_view(), name="files"),
    path("files/<str:file_id>", FileDetailApi.as_view(), name="file"),
    path("files/<str:file_id>/content", FileContentApi.as_view(), name="file-content"),
    path("batches", BatchListCreateApi.as_view(), name="batches"),
    path("batches/<str:batch_id>", BatchDetailApi.as_view(), name="batch"),
    path("batches/<str:batch_id>/cancel", BatchCancelApi.as_view(), name="batch-cancel"),
]
